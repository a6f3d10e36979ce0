"""kfm reproduce on a set without labels (CelebA, an image folder): no judging classifier, so
Fréchet distances are taken in the training split's top principal directions, named as such."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kinetic_fm.studies.config import (AssetsConfig, MemorizationConfig, ReproduceConfig, SemanticsConfig,
                                       ShapingConfig, SupportConfig)


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory):
    """60 smooth 8x8 grayscale images straight under one folder (no class folders: no labels),
    studied at the smallest sizes (a few seconds): 40 training images, so k = min(64, D = 64, 40 − 1) = 39."""
    from kinetic_fm.studies.reproduce import reproduce

    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:8, 0:8] / 7.0
    for i in range(60):
        a, b, c = rng.uniform(-1, 1, 3)
        face = 127.5 + 60 * (a * xx + b * yy + c * np.cos(3 * xx * yy)) + rng.normal(0, 8, (8, 8))
        Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    cfg = ReproduceConfig(
        mode="tiny",
        assets=AssetsConfig(data=f"folder:{folder}", n_heldout=20, memorizer_n=8, general_steps=2,
                            memorizer_steps=2, batch_size=8, model="mlp", width=8),
        semantics=SemanticsConfig(n_samples=16, steps=2, bootstrap=10),
        support=SupportConfig(k=3, bootstrap=10),
        memorization=MemorizationConfig(efm_sizes=(4,), efm_samples=4, efm_steps=2, checkpoint_samples=8,
                                        steps=2, bootstrap=10),
        shaping=ShapingConfig(n_samples=8, steps=2, more_steps=3, bootstrap=10),
    )
    out = tmp_path_factory.mktemp("unlabelled")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md, _ = reproduce(cfg, out, studies=("support", "memorization", "shaping"), progress=False)
    _WARNED[:] = caught
    return cfg, out, md.read_text()


_WARNED: list[warnings.WarningMessage] = []   # what the unlabelled run warned


def test_the_principal_space_is_the_training_splits_and_matches_a_brute_force(unlabelled_run):
    from kinetic_fm.studies.assets import load_assets
    from kinetic_fm.studies.workspace import Workspace

    cfg, out, _ = unlabelled_run
    assets = load_assets(cfg.assets, Workspace(out), progress=False)  # nets reloaded from models/
    assert assets.classifier is None and assets.classifier_name == "pixels-PCA39+residual"
    flat = assets.train.reshape(len(assets.train), -1).double().numpy()
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    feats = assets.features(assets.heldout).numpy()
    brute = (assets.heldout.reshape(len(assets.heldout), -1).double().numpy() - mean) @ vt[:39].T
    signs = np.sign((feats[:, :39] * brute).sum(0))
    assert feats.shape == (20, 40)
    # the smallest directions of 40 images hold little variance: compare where the SVD is well posed
    np.testing.assert_allclose(feats[:, :20], (brute * signs)[:, :20], rtol=0, atol=1e-8)
    # the last coordinate: the length of what the 39 directions leave out of each held-out image
    centred = assets.heldout.reshape(len(assets.heldout), -1).double().numpy() - mean
    rest = np.linalg.norm(centred - brute @ vt[:39], axis=1)
    np.testing.assert_allclose(feats[:, 39], rest, rtol=1e-8)
    assert torch.equal(assets.train_features(), assets.features(assets.train))


def test_the_space_is_named_wherever_an_fd_is_reported(unlabelled_run):
    _, out, text = unlabelled_run
    grid = pd.read_parquet(out / "tables" / "shaping__shaping_grid.parquet")
    assert "FD-pixels-PCA39+residual" in grid.columns and "FD-pixels" not in grid.columns
    assert "FD-pixels-PCA39+residual against all 40 training images" in text
    assert "no labels; FD in `pixels-PCA39+residual`: pixels projected on the training split's top 39 principal" in text
    assert "FD on pixels" not in text
    assert "(not used: no classifier trained here)" in text      # the classifier's steps, in the Run table


def test_support_densities_stay_in_raw_pixels(unlabelled_run):
    # kNN and KDE log-densities answer another question (local support in the data's own space):
    # the support study keeps its pixel space and adds no principal one
    _, out, _ = unlabelled_run
    support = pd.read_parquet(out / "tables" / "support__general_support.parquet")
    assert any(c.endswith("_pixels") for c in support.columns)
    assert not any("PCA" in c for c in support.columns)


def test_the_report_says_when_an_fd_has_no_more_samples_than_features(unlabelled_run):
    # FrechetBiasWarning reached the console only; the report now says it beside the numbers
    _, _, text = unlabelled_run
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")}
    note = "Each FD-pixels-PCA39+residual here comes from as few as {} samples of 40 features, no more samples than features"
    assert note.format(8) in sections["Energy and memorization across training"]   # 8 per checkpoint
    assert re.search(re.escape(note.format("@")).replace("@", "[2-4]"), sections["The Goldilocks picture"])   # a quintile of 16 samples
    assert note.format(8) in sections["Kinetic Trajectory Shaping"]   # 8 per setting
    assert "16 rows of 40 features, no more rows than features" in sections["Run"]   # the sample-quality line


def test_the_run_leaves_the_bias_warning_to_its_report_while_the_metric_still_warns(unlabelled_run):
    # a tiny run printed FrechetBiasWarning three times on the terminal, for values whose sections
    # already say it (the note above); the public metric keeps warning on the same inputs
    import kinetic_fm as kfm
    from kinetic_fm.studies.assets import load_assets
    from kinetic_fm.studies.workspace import Workspace

    cfg, out, text = unlabelled_run
    assert "no more samples than features" in text
    assert not [w for w in _WARNED if issubclass(w.category, kfm.FrechetBiasWarning)], \
        [str(w.message) for w in _WARNED]
    assets = load_assets(cfg.assets, Workspace(out), progress=False)
    feats = assets.features(assets.heldout[:8]).double()     # 8 samples of 40 features, as per checkpoint
    with pytest.warns(kfm.FrechetBiasWarning, match="8 and 40 samples of 40 features"):
        kfm.frechet_distance(feats, assets.train_features().double())


def test_the_bias_note_appears_exactly_when_samples_do_not_outnumber_features():
    from kinetic_fm.studies.output import fd_bias_note
    from kinetic_fm.studies.quality import SampleQuality

    assert "64 samples of 64 features" in fd_bias_note(64, 64, "FD-x") and fd_bias_note(65, 64, "FD-x") == ""
    assert "bias" in SampleQuality(3.0, 1.0, 9.0, 64, "x", 64).sentence()
    assert "bias" not in SampleQuality(3.0, 1.0, 9.0, 65, "x", 64).sentence()
    assert "bias" not in SampleQuality(3.0, 1.0, 9.0, 64, "x").sentence()


def test_a_cifar_resnet_judge_on_grey_images_is_refused_before_any_net_trains(tmp_path, monkeypatch):
    """--classifier resnet20 on grey images (CelebA) failed only in the semantics study, after the
    velocity nets had trained (minutes at --quick); now the assets refuse it before training."""
    import kinetic_fm.studies.assets as module
    from kinetic_fm.models.resnet_cifar import CifarResNet
    from kinetic_fm.studies.workspace import Workspace

    weights = tmp_path / "resnet20-random.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in CifarResNet(20).state_dict().items()}}, weights)
    g = torch.Generator().manual_seed(1)
    grey = torch.rand(50, 1, 8, 8, generator=g) * 2 - 1                # what celeba: loads, at 8x8
    monkeypatch.setattr(module, "_load_split", lambda cfg, progress=True: (grey[10:], None, grey[:10], None,
                                                                           None, "grey faces", None))
    cfg = AssetsConfig(data="celeba:faces.zip", classifier=f"resnet20:{weights}", n_heldout=10, memorizer_n=8,
                       general_steps=2, memorizer_steps=2, batch_size=8, model="mlp", width=8)
    with pytest.raises(ValueError, match=r"--classifier resnet20 judges RGB images \(3, 32, 32\), but "
                                         r"'celeba:faces.zip' loads images of shape \(1, 8, 8\); leave --classifier"):
        module.load_assets(cfg, Workspace(tmp_path / "out"), progress=False)
    assert not any(p.is_dir() for p in (tmp_path / "out" / "models").glob("*"))


def _resnet20_judge_on(tmp_path, monkeypatch, size: int, depth: int):
    """load_assets' module, a config judging ``size``x``size`` RGB images with random ResNet-20 weights
    given as ``resnet{depth}:PATH``, and the weights' path; the split is stood in for (50 images)."""
    import kinetic_fm.studies.assets as module
    from kinetic_fm.models.resnet_cifar import CifarResNet

    weights = tmp_path / "resnet20-random.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in CifarResNet(20).state_dict().items()}}, weights)
    rgb = torch.rand(50, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    monkeypatch.setattr(module, "_load_split", lambda cfg, progress=True: (rgb[10:], None, rgb[:10], None,
                                                                           None, "rgb images", None))
    cfg = AssetsConfig(data="celeba:faces.zip", classifier=f"resnet{depth}:{weights}", n_heldout=10,
                       memorizer_n=8, general_steps=2, memorizer_steps=2, batch_size=8, model="mlp", width=8)
    return module, cfg, weights


def test_a_cifar_resnet_judge_on_rgb_images_of_another_size_is_refused_before_any_net_trains(tmp_path, monkeypatch):
    """The check above read the channels only: 16x16 (or 64x64) RGB images went through, and the
    ResNet's global pooling judged them as CIFAR-10 images of another scale, without a word."""
    from kinetic_fm.studies.workspace import Workspace

    module, cfg, _ = _resnet20_judge_on(tmp_path, monkeypatch, size=16, depth=20)
    with pytest.raises(ValueError, match=r"--classifier resnet20 judges RGB images \(3, 32, 32\), but "
                                         r"'celeba:faces.zip' loads images of shape \(3, 16, 16\)"):
        module.load_assets(cfg, Workspace(tmp_path / "out"), progress=False)
    assert not any(p.is_dir() for p in (tmp_path / "out" / "models").glob("*"))


def test_a_cifar_resnet_judge_of_the_other_depth_names_the_flag(tmp_path, monkeypatch):
    """kfm reproduce --classifier resnet56:PATH with ResNet-20 weights read "classifier resnet56:PATH:
    the file holds ..."; the user typed --classifier."""
    from kinetic_fm.studies.workspace import Workspace

    module, cfg, weights = _resnet20_judge_on(tmp_path, monkeypatch, size=32, depth=56)
    with pytest.raises(ValueError, match=rf"^--classifier resnet56:{weights}: the file holds a ResNet-20's weights; "
                                         rf"write resnet20:{weights}$"):
        module.load_assets(cfg, Workspace(tmp_path / "out"), progress=False)


def test_centred_faces_are_drawn_with_their_mean_image_added_back(tmp_path, monkeypatch):
    """CelebA is centred by its mean face; the report's image figures add it back (display only), so
    the training images they draw are the uncentred ones, and the samples move by that same mean."""
    from kinetic_fm.data import load_celeba
    from kinetic_fm.studies import figures
    from kinetic_fm.studies.assets import load_assets
    from kinetic_fm.studies.reproduce import reproduce
    from kinetic_fm.studies.workspace import Workspace

    faces = tmp_path / "faces"
    faces.mkdir()
    rng = np.random.default_rng(2)
    for i in range(40):
        a = np.zeros((218, 178, 3), np.uint8)
        a[39:179, 19:159] = rng.integers(60, 200, 3, dtype=np.uint8)         # a flat square a face would fill
        a[80:140, 60:120] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(a).save(faces / f"{i:06d}.jpg", quality=95)
    raw = load_celeba(faces, center="none").images                       # what the faces look like
    drawn, titles = {}, {}
    for name in ("memorization_figure", "sample_grid_figure"):
        def keep(fig_name, caption, *args, _draw=getattr(figures, name), **kwargs):
            drawn[fig_name] = (caption, args)
            titles[fig_name] = kwargs.get("title")
            return _draw(fig_name, caption, *args, **kwargs)
        monkeypatch.setattr(figures, name, keep)
    cfg = ReproduceConfig(
        mode="tiny",
        assets=AssetsConfig(data=f"celeba:{faces}", n_heldout=16, memorizer_n=8, general_steps=2,
                            memorizer_steps=2, batch_size=8, model="mlp", width=8),
        semantics=SemanticsConfig(n_samples=20, steps=2, bootstrap=10),
        memorization=MemorizationConfig(efm_sizes=(4,), efm_samples=4, efm_steps=2, checkpoint_samples=8,
                                        steps=2, bootstrap=10),
    )
    reproduce(cfg, tmp_path / "out", studies=("semantics", "memorization"), progress=False)
    mean = raw.double().mean(0)
    cache = tmp_path / "out" / "cache"
    for name in ("memorizer_copies", "memorizer_copies_span"):
        caption, (report, samples, train) = drawn[name]
        assert "mean image added back (display only)" in caption
        nearest_raw = torch.cdist(train.double().flatten(1), raw.double().flatten(1)).min(1).values
        assert nearest_raw.max() < 1e-5                                     # every drawn item is an uncentred face
    final_x = torch.load(max(cache.glob("memorizer-step*.pt"), key=lambda p: int(p.name.split("-")[1][4:])))["x"]
    torch.testing.assert_close(drawn["memorizer_copies_span"][1][1].double(), final_x.double() + mean)
    # the KPE groups: the generalising model's samples, clamped to the centred training range as judged
    assets = load_assets(cfg.assets, Workspace(tmp_path / "out"), progress=False)
    # the copies figure's title gives that clamp as drawn: the mean face plus the centred range (a
    # bare centred range read as the range of the uncentred faces beside it)
    low, high = float(assets.train.min()), float(assets.train.max())
    assert float(assets.mean.abs().max()) > 0.01       # a mean was taken out: the two readings differ
    assert titles["memorizer_copies"] == f"audited in pixels; samples clamped to mean image + [{low:g}, {high:g}]"
    judged = next(cache.glob("general-fm-*.pt"))
    judged = torch.load(judged)["x"].clamp(float(assets.train.min()), float(assets.train.max())).double()
    caption, (groups,) = drawn["samples_by_kpe"]
    assert "mean image added back" in caption
    for images in groups.values():
        shown = torch.as_tensor(images).double() - mean
        assert torch.cdist(shown.flatten(1), judged.flatten(1)).min(1).values.max() < 1e-5
