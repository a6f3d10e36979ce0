import pytest
import torch

from kinetic_fm.data import load_digits
from kinetic_fm.models import SmallCNN, logit_margin, train_classifier


def test_logit_margin_is_top1_minus_top2():
    logits = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 0.0]])
    assert torch.equal(logit_margin(logits), torch.tensor([3.0, 0.0]))


def test_features_and_logits_shapes():
    model = SmallCNN(1, 10, width=8, feature_dim=16).eval()
    x = torch.randn(4, 1, 28, 28)
    assert model.features(x).shape == (4, 16)
    assert torch.equal(model.logits(x), model.head(model.features(x)))


def test_tiny_digits_classifier_generalises_and_is_deterministic():
    ds = load_digits()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1400], perm[1400:]
    kwargs = dict(steps=200, batch_size=64, width=16, lr=5e-3, seed=3)
    fit = train_classifier(ds.images[train_idx], ds.labels[train_idx],
                           test=(ds.images[test_idx], ds.labels[test_idx]), **kwargs)
    assert fit.test_accuracy >= 0.9
    again = train_classifier(ds.images[train_idx], ds.labels[train_idx], **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(fit.model.state_dict().values(), again.model.state_dict().values()))
    with pytest.raises(ValueError, match="images must be"):
        train_classifier(ds.images[:, 0], ds.labels)
