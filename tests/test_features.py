"""FeatureSpace and as_features: what a feature map must return, how it is named, and the dtype
integer inputs are measured in."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kinetic_fm.metrics.features import FeatureSpace, as_features, feature_space


def test_a_feature_map_returning_images_is_flattened_per_row():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1).eval()      # (b, 2, 4, 4) feature maps
    x = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        expected = conv(x).reshape(5, 32)
    got = FeatureSpace(conv, batch_size=2)(x)
    assert got.shape == (5, 32)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)   # chunks of 2 round differently


def test_a_feature_map_must_return_one_tensor_row_per_input():
    with pytest.raises(ValueError, match="returned 1 rows for 3 inputs"):
        FeatureSpace(lambda x: x[:1], name="short")(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="must return a Tensor, got ndarray"):
        FeatureSpace(lambda x: x.numpy(), name="numpy")(torch.zeros(3, 2))


def test_a_callable_is_named_after_itself_a_module_after_its_class():
    def inception_pool(x):
        return x

    assert feature_space(inception_pool).name == "inception_pool"
    assert feature_space(torch.nn.Identity()).name == "Identity"
    assert feature_space(None).name == "pixels"


def test_a_parameter_free_module_gets_floats_in_its_floating_buffers_dtype():
    # an integer buffer first (a counter) must not set the dtype: float inputs cast to int64
    # were truncated to whole numbers before the projection
    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
            self.register_buffer("weight", torch.eye(2, dtype=torch.float64))

        def forward(self, x):
            return x @ self.weight

    x = torch.tensor([[0.25, 1.5], [-0.75, 2.0]], dtype=torch.float32)
    got = FeatureSpace(Projection())(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, x.double(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype, want", [(torch.uint8, torch.float32), (torch.int16, torch.float32),
                                         (torch.int32, torch.float64), (torch.int64, torch.float64)])
def test_integer_inputs_are_measured_in_the_narrowest_exact_float(dtype, want):
    assert as_features(torch.zeros(2, 3, dtype=dtype)).dtype == want


def test_int32_values_past_float32s_integers_stay_exact():
    # float32 rounds 2^25 + 1 to 2^25: two rows one apart would read as equal
    x = torch.tensor([[2**25], [2**25 + 1]], dtype=torch.int32)
    feats = as_features(x)
    assert (feats[1] - feats[0]).item() == 1.0
    np.testing.assert_array_equal(feats.numpy(), x.numpy().astype(np.float64))


@pytest.mark.filterwarnings("ignore:.*Fréchet distance:UserWarning")
def test_a_float32_net_or_its_method_measures_float64_samples_in_every_metric():
    # memorization called a module on the float64 rows as they were ("Input type (double) and bias
    # type (float) should be the same"), and no metric cast for a bound method such as net.features,
    # the README's own spelling; FeatureSpace(net) worked
    import kinetic_fm as kfm
    from kinetic_fm.models import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(1, 10, width=4, feature_dim=8).eval()
    samples = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1
    train = torch.rand(12, 1, 8, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        by_hand = {"net": (net(samples.float()), net(train.float())),
                   "features": (net.features(samples.float()), net.features(train.float()))}
    for name, space in (("net", net), ("features", net.features)):
        report = kfm.memorization(samples, train, bootstrap=0, space=space)
        reference = kfm.memorization(by_hand[name][0], by_hand[name][1], bootstrap=0)
        torch.testing.assert_close(report.ratio, reference.ratio, rtol=1e-5, atol=0)
        assert torch.equal(report.nearest, reference.nearest)
        fd = kfm.frechet_distance(samples, train, space=space)
        assert fd.value == pytest.approx(kfm.frechet_distance(*by_hand[name]).value, rel=1e-4)


def test_a_feature_map_in_training_mode_is_warned_about_once_a_call():
    # the metrics that map two sets warned once per set, twice a call
    import warnings

    import kinetic_fm as kfm
    from kinetic_fm.sampling.guards import TrainingModeWarning

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    x, y = torch.randn(10, 4), torch.randn(20, 4)
    for measure in (lambda: kfm.frechet_distance(x, y, space=net), lambda: kfm.precision_recall(y, x, k=2, space=net),
                    lambda: kfm.local_support(x, y, k=2, space=net), lambda: kfm.kde_log_density(x, y, space=net),
                    lambda: kfm.memorization(x, y, space=net, bootstrap=0)):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            measure()
        assert [w.category for w in got if w.category is TrainingModeWarning] == [TrainingModeWarning]
