"""A training run's record of the values it trained on (config.json's data_sha256): checked on
resume (train(..., resume=True), kfm train --resume) and by --train RUN (kfm memorization, kfm
sample --field empirical), which redraw the items from the recorded spec."""
import hashlib
import json

import numpy as np
import pytest
import torch

from kinetic_fm.cli import main
from kinetic_fm.models import TrainConfig, VelocityMLP, train
from kinetic_fm.models.checkpoint import load_state, save_state

TRAIN = ["--batch-size", "4", "--width", "8", "--model", "mlp", "--checkpoints", "none", "--no-progress"]


def _png_folder(folder, count=5, seed=0):
    """Colour images: a grey folder loads as one channel (R = G = B), these tests' runs are (3, 8, 8)."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _replace_one_image(folder):
    """Another image under one file's name: the same count, the same shape, other values."""
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), (7, 9, 11), dtype=np.uint8)).save(folder / "2.png")


def _samples(tmp_path):
    path = tmp_path / "samples.npy"
    np.save(path, np.random.default_rng(3).uniform(-1, 1, size=(3, 3, 8, 8)).astype(np.float32))
    return str(path)


def _audit(samples, run):
    return main(["memorization", "--samples", samples, "--train", str(run), "--bootstrap", "0", "--no-progress"])


def test_a_kfm_train_run_records_the_sha256_of_its_items_last_in_config_json(tmp_path):
    from kinetic_fm.data import dataset_rows, load_dataset

    images = _png_folder(tmp_path / "images")
    assert main(["train", "--data", f"folder:{images}", "--n", "4", "--steps", "1", *TRAIN,
                 "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert list(config) == ["model", "train", "data_shape", "info", "data_sha256"]   # a key added, last
    items = dataset_rows(load_dataset(f"folder:{images}", n=4, seed=0, progress=False))
    assert items.dtype == torch.float32 and list(items.shape) == config["data_shape"]
    assert config["data_sha256"] == {"data": hashlib.sha256(items.numpy().tobytes()).hexdigest(),
                                     "dtype": "float32", "labels": None}


def test_memorization_of_a_run_whose_image_was_replaced_is_refused(tmp_path, capsys):
    # main redrew the spec and audited the new items without a word: the shape was all it checked
    images = _png_folder(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{images}", "--steps", "1", *TRAIN, "--out", str(run)]) == 0
    samples = _samples(tmp_path)
    assert _audit(samples, run) == 0
    assert "the 5 items it trained on" in capsys.readouterr().out
    _replace_one_image(images)
    assert _audit(samples, run) == 2
    err = capsys.readouterr().err
    assert f"--train {str(run)!r}: 'folder:{images}' now loads other items than the run trained on" in err
    assert "restore the data the run trained on, or pass the training items themselves" in err
    # kfm sample --field empirical --train RUN redraws them the same way
    assert main(["sample", "--field", "empirical", "--train", str(run), "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(tmp_path / "efm")]) == 2
    assert "now loads other items than the run trained on" in capsys.readouterr().err
    assert not (tmp_path / "efm" / "manifest.json").exists()


def test_a_run_from_before_the_record_is_audited_as_before_without_a_word(tmp_path, capsys):
    # no data_sha256 in its config.json: nothing to check against, so the shape check alone, as before
    images = _png_folder(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{images}", "--steps", "1", *TRAIN, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["data_sha256"]
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _replace_one_image(images)
    capsys.readouterr()
    assert _audit(_samples(tmp_path), run) == 0
    out, err = capsys.readouterr()
    assert "the 5 items it trained on" in out and "sha256" not in out + err


def _trained_then_an_image_replaced(tmp_path, capsys) -> list[str]:
    """kfm train's arguments of a 2-step run on a folder of 5 images, whose image 2 was then replaced; the run's
    output read away from capsys."""
    images = _png_folder(tmp_path / "images")
    args = ["train", "--data", f"folder:{images}", *TRAIN, "--save-every", "1", "--out", str(tmp_path / "run")]
    assert main([*args, "--steps", "2"]) == 0
    _replace_one_image(images)
    capsys.readouterr()
    return args


def test_kfm_train_resume_on_a_folder_whose_image_was_replaced_is_refused(tmp_path, capsys):
    args = _trained_then_an_image_replaced(tmp_path, capsys)
    assert main([*args, "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the data (sha256 " in err and "differ from those the run trained on (of the same shape [5, 3, 8, 8])" in err
    assert "the same --data, --n and --seed, over the same files" in err


def test_a_resume_with_a_changed_lr_and_other_data_gives_one_way_on_for_both(tmp_path, capsys):
    # "--lr (the run's 0.001, now 0.002); and the data (...) differ ...: resume with the data it trained on (...)
    # or train a new run": a resume with that data alone was refused again, for its --lr (helper-315)
    args = _trained_then_an_image_replaced(tmp_path, capsys)
    assert main([*args, "--steps", "4", "--lr", "0.002", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "settings differ from the saved run: --lr (the run's 0.001, now 0.002); and the data (sha256 " in err
    assert err.count("resume with") == 1 and err.count("train a new run") == 1
    assert ("differ from those the run trained on (of the same shape [5, 3, 8, 8]): resume with the run's settings "
            "and the data it trained on (kfm train: the same --data, --n and --seed, over the same files;") in err
    # the data alone: its own way on, as before
    assert main([*args, "--steps", "4", "--resume"]) == 2
    assert ": resume with the data it trained on (kfm train:" in capsys.readouterr().err


def _points():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0))


def test_resume_with_other_data_or_labels_of_the_same_shape_is_refused(tmp_path):
    # main compared data_shape (and info) only: other values of that shape resumed without a word
    config, more = TrainConfig(steps=2, batch_size=4, save_every=1), TrainConfig(steps=4, batch_size=4)
    data = _points()
    train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"cannot resume .*resume.pt: the data \(sha256 [0-9a-f]{12}… saved, "
                                         r"[0-9a-f]{12}… now\) differ from those the run trained on \(of the same "
                                         r"shape \[64, 2\]\)"):
        train(VelocityMLP(2, hidden=8, depth=1), data + 1, more, out=tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match=r"train.lr: saved 0.001, now 0.5; and the data \(sha256"):
        train(VelocityMLP(2, hidden=8, depth=1), data.flip(0), TrainConfig(steps=4, batch_size=4, lr=0.5),
              out=tmp_path / "run", resume=True)
    assert train(VelocityMLP(2, hidden=8, depth=1), data.clone(), more, out=tmp_path / "run",
                 resume=True).resumed_from == 2

    labels = torch.arange(64) % 3
    train(VelocityMLP(2, hidden=8, depth=1, num_classes=3), data, config, labels=labels, out=tmp_path / "cond")
    recorded = json.loads((tmp_path / "cond" / "config.json").read_text())["data_sha256"]
    assert recorded["labels"] == hashlib.sha256(labels.numpy().tobytes()).hexdigest()
    with pytest.raises(ValueError, match=r": the labels \(sha256 .*\) differ from those the run trained on"):
        train(VelocityMLP(2, hidden=8, depth=1, num_classes=3), data, more, labels=labels.flip(0),
              out=tmp_path / "cond", resume=True)


def test_a_resume_that_adds_or_drops_labels_names_the_nets_change_alone_and_a_rate_change_stays_refused(tmp_path):
    # it also named train.label_dropout (saved 0.0, now 0.1): a run without labels records no dropout, so the
    # rate changed with the net's classes, named by the model's record (kfm train hid it by a special case)
    config, data, labels = TrainConfig(steps=2, batch_size=4, save_every=1), _points(), torch.arange(64) % 3
    more = TrainConfig(steps=4, batch_size=4)
    train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "plain")
    train(VelocityMLP(2, hidden=8, depth=1, num_classes=3), data, config, labels=labels, out=tmp_path / "cond")
    for run, net, given in (("plain", VelocityMLP(2, hidden=8, depth=1, num_classes=3), labels),
                            ("cond", VelocityMLP(2, hidden=8, depth=1), None)):
        with pytest.raises(ValueError) as refused:
            train(net, data, more, labels=given, out=tmp_path / run, resume=True)
        assert "settings differ from the saved run (model): model: saved " in str(refused.value)
        assert "label_dropout" not in str(refused.value) and "labels" not in str(refused.value)
    with pytest.raises(ValueError, match=r"\(train.label_dropout\): train.label_dropout: saved 0.1, now 0.2"):
        train(VelocityMLP(2, hidden=8, depth=1, num_classes=3), data, TrainConfig(steps=4, batch_size=4,
              label_dropout=0.2), labels=labels, out=tmp_path / "cond", resume=True)


def test_a_run_from_before_the_record_resumes_as_before_and_stays_without_it(tmp_path):
    config = TrainConfig(steps=2, batch_size=4, save_every=1)
    data = _points()
    train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path)
    # as an older version wrote them: neither config.json nor resume.pt's config has the key
    body = json.loads((tmp_path / "config.json").read_text())
    del body["data_sha256"]
    (tmp_path / "config.json").write_text(json.dumps(body, indent=2) + "\n")
    state = load_state(tmp_path / "resume.pt")
    saved = json.loads(state["config"])
    del saved["data_sha256"]
    state["config"] = json.dumps(saved)
    save_state(state, tmp_path / "resume.pt")
    result = train(VelocityMLP(2, hidden=8, depth=1), data + 1, TrainConfig(steps=4, batch_size=4), out=tmp_path,
                   resume=True)                                   # other values, unchecked: as before
    assert result.resumed_from == 2
    assert list(json.loads((tmp_path / "config.json").read_text())) == ["model", "train", "data_shape", "info"]
    assert "data_sha256" not in json.loads(load_state(tmp_path / "resume.pt")["config"])


def _reproduce_net(tmp_path, images, rows):
    """A folder as kfm reproduce leaves a velocity net in models/ (studies/assets.py): a training run
    on rows ``rows`` of the loaded data set, with its training_items.json beside config.json."""
    from kinetic_fm.data import dataset_rows, load_dataset
    from kinetic_fm.studies.assets import TRAINING_ITEMS

    items = dataset_rows(load_dataset(f"folder:{images}", progress=False))
    net = tmp_path / "models" / "memorizer-0"
    train(VelocityMLP((3, 8, 8), hidden=8, depth=1), items[rows], TrainConfig(steps=1, batch_size=2,
                                                                                checkpoints="none"),
          out=net, info={"study": "memorizer"})
    (net / TRAINING_ITEMS).write_text(json.dumps({"data": f"folder:{images}", "n": None, "seed": 0, "rows": rows,
                                                  "data_shape": [len(rows), 3, 8, 8]}) + "\n")
    return net


def test_memorization_of_a_reproduce_net_whose_training_image_was_replaced_is_refused(tmp_path, capsys):
    # its config.json records the sha256 of the rows it trained on, but --train NET checked only their
    # shape: the new image was audited as if the net had trained on it
    images = _png_folder(tmp_path / "images")
    net = _reproduce_net(tmp_path, images, [0, 2, 4])
    samples = _samples(tmp_path)
    assert _audit(samples, net) == 0
    assert "the 3 items it trained on (folder:" in capsys.readouterr().out
    (images / "1.png").write_bytes((images / "3.png").read_bytes())   # a row it did not train on: still its items
    assert _audit(samples, net) == 0
    capsys.readouterr()
    _replace_one_image(images)                                        # row 2: one it trained on
    assert _audit(samples, net) == 2
    err = capsys.readouterr().err
    assert f"--train {str(net)!r}: 'folder:{images}' now loads other items than the run trained on" in err
    assert main(["sample", "--field", "empirical", "--train", str(net), "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(tmp_path / "efm")]) == 2
    assert "now loads other items than the run trained on" in capsys.readouterr().err


def test_a_resume_given_the_items_in_another_dtype_compares_their_values_or_is_refused(tmp_path):
    # train() records the items as the net trains on them (cast to its dtype): float64 items are
    # compared by the float32 values its batches take
    config, more = TrainConfig(steps=2, batch_size=4, save_every=1), TrainConfig(steps=4, batch_size=4)
    data = _points()
    train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"the data \(sha256 .*\) differ from those the run trained on"):
        train(VelocityMLP(2, hidden=8, depth=1), data.double() + 1e-3, more, out=tmp_path / "run", resume=True)
    assert train(VelocityMLP(2, hidden=8, depth=1), data.double(), more, out=tmp_path / "run",
                 resume=True).resumed_from == 2                     # the same float32 batches
    # train_classifier records its images in their own dtype: other float64 images resumed a float32
    # run without a word (the sha256 compared only where the dtypes agreed)
    from kinetic_fm.models.classifier import train_classifier

    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(20) % 2
    settings = dict(steps=4, batch_size=4, width=4, save_every=2, out=tmp_path / "judge")
    train_classifier(images, labels, **settings)
    for other in (images.flip(0).double(), images.double()):
        with pytest.raises(ValueError, match=r"cannot resume .*resume.pt: the data are float64, the run trained on "
                                             r"float32"):
            train_classifier(other, labels, **settings, resume=True)
    assert train_classifier(images, labels, **settings, resume=True).model is not None
