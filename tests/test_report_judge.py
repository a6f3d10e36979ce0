"""How `kfm reproduce` names its judge: a pretrained classifier's accuracy is measured on images of
the training split (not held out from it), and a set without labels has no classifier at all."""
from types import SimpleNamespace

import torch

from kinetic_fm.studies.config import ReproduceConfig
from kinetic_fm.studies.output import judge_text
from kinetic_fm.studies.reproduce import _overview


def _assets(classifier, name, accuracy, pretrained):
    return SimpleNamespace(classifier=classifier, classifier_name=name, classifier_accuracy=accuracy,
                           classifier_pretrained=pretrained, heldout=torch.zeros(300, 1),
                           train=torch.zeros(5000, 1), memorizer_train=torch.zeros(64, 1), source="src")


def test_pretrained_judge_accuracy_is_not_called_held_out():
    text = judge_text(_assets(torch.nn.Identity(), "resnet56", 0.92, True))
    assert "held-out accuracy 92" not in text
    assert "92.0%" in text and "training split" in text and "300" in text


def test_judge_trained_here_keeps_held_out_accuracy():
    assert judge_text(_assets(torch.nn.Identity(), "mnist-cnn", 0.95, False)) == "`mnist-cnn` (held-out accuracy 95.0%)"


def test_unlabelled_set_has_no_judging_classifier_in_the_overview():
    cfg = ReproduceConfig.preset("tiny", data="celeba:/x.zip")
    text = _overview(cfg, ("semantics", "support"), _assets(None, "pixels", None, False), {"semantics": 1.0}, 1.0)
    assert "judging classifier `pixels`" not in text
    assert "no judging classifier" in text


def test_overview_names_a_trained_judge_as_before():
    cfg = ReproduceConfig.preset("tiny", data="mnist:/x")
    text = _overview(cfg, ("semantics",), _assets(torch.nn.Identity(), "mnist-cnn", 0.95, False), {"semantics": 1.0}, 1.0)
    assert "Nets: the judging classifier `mnist-cnn` (held-out accuracy 95.0%), a generalising" in text


def _support_text(monkeypatch, assets) -> str:
    from kinetic_fm.studies import support
    from kinetic_fm.studies.config import SemanticsConfig, SupportConfig

    g = torch.Generator().manual_seed(0)
    run = {"x": torch.rand(12, 1, 4, 4, generator=g) * 2 - 1, "kpe": torch.rand(12, generator=g),
           "seeds": torch.arange(12)}
    monkeypatch.setattr(support, "general_samples", lambda *args: run)
    quiet = SimpleNamespace(say=lambda text: None)                  # a workspace that shows no progress
    out = support.run_support(SupportConfig(k=3, bootstrap=20), SemanticsConfig(), assets, quiet, "")
    spaces = set(out.tables["general_support"].filter(like="knn_log_density_").columns)
    return out.sections[0].text, spaces


def test_support_text_names_only_the_spaces_it_measured(monkeypatch):
    train = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    value_range = lambda: (float(train.min()), float(train.max()))  # noqa: E731  (Assets.value_range)
    unlabelled = SimpleNamespace(train=train, classifier=None, classifier_name="pixels", value_range=value_range)
    text, spaces = _support_text(monkeypatch, unlabelled)
    assert spaces == {"knn_log_density_pixels"}
    assert "feature space" not in text and "in pixel space only: the data have no labels" in text
    labelled = SimpleNamespace(train=train, classifier=torch.nn.Identity(), classifier_name="digits-cnn",
                               value_range=value_range,
                               features=lambda x: x.flatten(1)[:, :3], train_features=lambda: train.flatten(1)[:, :3],
                               sample_features=lambda x: x.clamp(*value_range()).flatten(1)[:, :3])
    text, spaces = _support_text(monkeypatch, labelled)
    assert spaces == {"knn_log_density_pixels", "knn_log_density_digits-cnn"}
    assert "in pixel space and in the judging classifier's feature space (`digits-cnn`)" in text
