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


def test_a_feature_space_of_a_network_is_named_after_it_not_pixels():
    # FeatureSpace(fn=net) kept the dataclass default "pixels": its messages read "feature map
    # 'pixels'" and every result measured in it (a local-support table's space, a Fréchet
    # distance's protocol) said pixels for a network. It now takes feature_space's name
    import kinetic_fm as kfm

    def inception_pool(x):
        return x

    net = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
    assert FeatureSpace().name == FeatureSpace(None).name == "pixels"
    assert FeatureSpace(net).name == "Sequential"
    assert FeatureSpace(inception_pool).name == "inception_pool"
    assert FeatureSpace(lambda x: x).name == "<lambda>"
    assert FeatureSpace(net.forward).name == "forward"
    for fn in (net, inception_pool, net.forward, None):
        assert FeatureSpace(fn).name == feature_space(fn).name
    assert FeatureSpace(net, "mine").name == FeatureSpace(net, name="mine").name == "mine"
    assert FeatureSpace(None, name="raw").name == "raw" and FeatureSpace(net, "pixels").name == "pixels"
    assert FeatureSpace(net) == FeatureSpace(net, "Sequential")
    x, ref = torch.randn(6, 3), torch.randn(20, 3)
    assert kfm.local_support(x, ref, k=2, ks=(1, 2), space=FeatureSpace(net)).space == "Sequential"
    fd = kfm.frechet_distance(x, ref, space=FeatureSpace(net))
    assert fd.protocol.network == "Sequential" and fd.name == "FD-Sequential"

    class FirstRow(torch.nn.Module):
        def forward(self, x):
            return x[:1]

    with pytest.raises(ValueError, match="feature map 'FirstRow' returned 1 rows for 3 inputs"):
        FeatureSpace(FirstRow())(torch.zeros(3, 2))


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


def _batch_norm_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    with torch.no_grad():   # running statistics away from their initial values, so a reset would show
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net


def _measures(x, y):
    import kinetic_fm as kfm

    return {"memorization": lambda s: kfm.memorization(x, y, space=s, bootstrap=0, space_chunk=4).ratio,
            "frechet_distance": lambda s: kfm.frechet_distance(x, y, space=s).value,
            "precision_recall": lambda s: kfm.precision_recall(y, x, k=2, space=s).fake_in_real,
            "local_support": lambda s: kfm.local_support(x, y, k=2, space=s).radii,
            "kde_log_density": lambda s: kfm.kde_log_density(x, y, space=s).log_density,
            "FeatureSpace": lambda s: FeatureSpace(s, batch_size=4)(y),
            "as_features": lambda s: as_features(y, FeatureSpace(s, batch_size=4)),
            "classifier_margin": lambda s: kfm.classifier_margin(s, y, batch_size=4).margin}


@pytest.mark.parametrize("kind", ["module", "method", "lambda"])
def test_a_metric_leaves_a_training_mode_network_as_it_found_it(kind):
    # batch norm in training mode updated running_mean, running_var and num_batches_tracked with every
    # chunk a metric fed it: measuring changed the caller's net, and its later eval outputs with it
    import copy
    import warnings

    from kinetic_fm.sampling.guards import TrainingModeWarning

    x, y = torch.randn(10, 4), torch.randn(20, 4)
    probe = torch.randn(6, 4)
    for name, measure in _measures(x, y).items():
        net, twin = _batch_norm_net(), _batch_norm_net()
        before = copy.deepcopy(net.state_dict())
        held = net[1].running_mean
        space = {"module": net, "method": net.forward, "lambda": lambda rows: net(rows)}[kind]
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            value = measure(space)
        assert [w.category for w in got if w.category is TrainingModeWarning] == [TrainingModeWarning], name
        assert net.training and net[1].training, name            # the mode is the caller's
        after = net.state_dict()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before), (name, kind)
        assert net[1].running_mean is held, name                  # restored in place
        # the numbers are the training-mode ones, as before: the same call on an untouched twin
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TrainingModeWarning)
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(measure(twin))), name
        with torch.no_grad():
            assert torch.equal(net.eval()(probe), _batch_norm_net().eval()(probe)), name


def test_a_network_interrupted_mid_measurement_is_left_as_found():
    # an error (or Ctrl-C) after some chunks had gone through left their statistics in the net
    import copy
    import warnings

    import kinetic_fm as kfm

    net = _batch_norm_net()
    before = copy.deepcopy(net.state_dict())
    calls = []

    def space(rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return net(rows)

    x, y = torch.randn(10, 4), torch.randn(20, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for measure in (lambda: kfm.memorization(x, y, space=space, bootstrap=0, space_chunk=4),
                        lambda: FeatureSpace(space, batch_size=4)(y)):
            calls.clear()
            with pytest.raises(KeyboardInterrupt):
                measure()
            assert len(calls) == 3
            assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)


def test_every_buffer_a_training_module_updates_is_put_back():
    # not only batch norm: spectral norm's power iteration moves weight_u in training mode (no warning:
    # its features are deterministic), and a module may rebind a buffer rather than write into it
    import warnings

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

        def forward(self, rows):
            self.seen = self.seen + len(rows)
            return rows

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.utils.spectral_norm(torch.nn.Linear(4, 8)), Counting())
    u, seen = net[0].weight_u, net[1].seen
    u_before = u.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nothing random or batch-dependent here
        FeatureSpace(net, batch_size=4)(torch.randn(10, 4))
    assert net[0].weight_u is u and torch.equal(u, u_before)
    assert net[1].seen is seen and int(seen) == 0


def test_an_eval_mode_network_is_not_copied():
    from kinetic_fm.sampling.guards import TrainingModeWarning, feature_map_as_found

    net = _batch_norm_net().eval()
    with feature_map_as_found(net) as kept:
        assert kept._kept == []
    net[2].train()   # only the modules in training mode, each buffer once
    with feature_map_as_found(lambda rows: net[2](net(rows))) as kept:
        assert kept._kept == []   # Linear holds no buffers
    net[1].train()
    with pytest.warns(TrainingModeWarning), feature_map_as_found(net) as kept:
        assert sorted(name for _, name, _, _ in kept._kept) == ["num_batches_tracked", "running_mean",
                                                                "running_var"]


# --- review (helper-187): empty batches, chunk-dependent feature widths ----------------------

def test_an_empty_batch_of_images_has_zero_rows_of_the_flattened_width():
    # the identity met torch's "cannot reshape tensor of 0 elements into shape [0, -1]"
    assert FeatureSpace()(torch.zeros(0, 3, 4, 4)).shape == (0, 48)
    assert FeatureSpace()(torch.zeros(2, 3, 4, 4)).shape == (2, 48)


def test_a_feature_map_whose_width_changes_between_chunks_is_named():
    # torch.cat's "Sizes of tensors must match except in dimension 0" named neither the map nor the rows
    def narrowing(x):
        return x[:, :x.shape[0]]

    with pytest.raises(ValueError, match=r"feature map 'narrowing' returned features of shape \(3,\) for rows "
                                         r"0-2 but \(2,\) for rows 3-4"):
        FeatureSpace(narrowing, batch_size=3)(torch.randn(5, 6))


@pytest.mark.parametrize("batch_size", [1, 2, 7, 256])
def test_a_feature_map_gives_each_row_the_features_it_gives_that_row_alone(batch_size):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Tanh()).eval()
    x = torch.randn(7, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        want = torch.cat([net.double()(x[i:i + 1]) for i in range(7)]).float()
    net.float()
    got = FeatureSpace(net, batch_size=batch_size)(x)
    assert got.shape == (7, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("net", [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)),
                                 torch.nn.Conv2d(3, 4, 1)])
def test_integer_inputs_to_a_floating_network_that_refuses_them_are_explained(net):
    # torch's "mat1 and mat2 must have the same dtype, but got Byte and Float" from inside the net
    # did not say that integer inputs reach a network as they are, on purpose
    from kinetic_fm.metrics.semantics import classifier_margin

    x = torch.randint(0, 255, (4, 3, 2, 2), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"feature map '\w+' failed on torch.uint8 inputs, which reach a network "
                                        r"as they are .* torch.float32 weights: convert them"):
        FeatureSpace(net.eval())(x)
    with pytest.raises(TypeError, match="failed on torch.uint8 inputs"):
        classifier_margin(net.eval(), x)
    # floats go through, in the net's own dtype
    assert FeatureSpace(net.eval())(x.double() / 127.5 - 1).dtype == torch.float32


def test_other_errors_of_a_network_on_integer_inputs_pass_as_they_are():
    def out_of_memory(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    net = torch.nn.Linear(3, 2)
    net.forward = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        FeatureSpace(net.eval())(torch.zeros(2, 3, dtype=torch.uint8))
    net.forward = lambda x: x.reshape(5, -1)   # a shape error, not a dtype one
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        FeatureSpace(net.eval())(torch.zeros(2, 3, dtype=torch.uint8))


def test_feature_space_of_a_feature_space_honours_the_settings_given():
    # feature_space(FeatureSpace(...), batch_size=, name=, device=) returned the space as it was,
    # silently dropping the three settings; it now returns a copy with those given, others kept
    seen = []

    def double(x):
        seen.append(x.shape[0])
        return 2 * x

    fs = FeatureSpace(double, name="double", batch_size=4)
    x = torch.arange(10.0).reshape(10, 1)
    assert feature_space(fs) is fs                              # nothing given: the space itself
    small = feature_space(fs, batch_size=3)
    assert (small.fn, small.name, small.batch_size, small.device) == (double, "double", 3, None)
    assert torch.equal(small(x), 2 * x) and seen == [3, 3, 3, 1]   # chunks of the batch_size given
    seen.clear()
    assert torch.equal(fs(x), 2 * x) and seen == [4, 4, 2]          # the original is unchanged
    renamed = feature_space(fs, name="twice", device="cpu")
    assert (renamed.name, renamed.batch_size, renamed.device) == ("twice", 4, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        feature_space(fs, batch_size=0)
    assert feature_space(double).batch_size == 256                  # a new space's default


# --- FeatureSpace.map: the public call, and the one that leaves the training-mode check to its caller ---

def test_map_checks_a_training_mode_network_unless_told_its_caller_does():
    # metrics that feed one set chunk by chunk inside their own feature_map_as_found called the private
    # _mapped; map(check_training=False) is that path by name, map() and __call__ the checked one
    import warnings

    from kinetic_fm.sampling.guards import TrainingModeWarning, feature_map_as_found

    y = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    twin = _batch_norm_net()
    with torch.no_grad():   # batch norm in training mode normalises each chunk of 4 by its own statistics
        want = torch.cat([twin(y[i:i + 4]) for i in range(0, 20, 4)])

    def run(call):
        net = _batch_norm_net()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            features = call(net)
        warned = sum(w.category is TrainingModeWarning for w in got)
        kept = all(torch.equal(net.state_dict()[k], before[k]) for k in before)
        return features, warned, kept, int(net[1].num_batches_tracked)

    for call in (lambda net: FeatureSpace(net, batch_size=4)(y), lambda net: FeatureSpace(net, batch_size=4).map(y)):
        features, warned, kept, tracked = run(call)
        assert torch.equal(features, want) and warned == 1 and kept and tracked == 0
    features, warned, kept, tracked = run(lambda net: FeatureSpace(net, batch_size=4).map(y, check_training=False))
    assert torch.equal(features, want) and warned == 0 and not kept and tracked == 5   # the caller's to do

    def checked_once(net):
        with feature_map_as_found(net):
            return FeatureSpace(net, batch_size=4).map(y, check_training=False)

    features, warned, kept, tracked = run(checked_once)
    assert torch.equal(features, want) and warned == 1 and kept and tracked == 0


def test_map_keeps_the_maps_own_output_shape_unless_flattened():
    x = torch.arange(12.0).reshape(2, 2, 3)

    def doubled(rows):
        return torch.stack([rows, rows], dim=1)   # (b, 2, 2, 3)

    space = FeatureSpace(doubled, batch_size=1)
    assert torch.equal(space.map(x, flatten=False), doubled(x))
    assert torch.equal(space.map(x), doubled(x).reshape(2, 12))
    assert torch.equal(space.map(x, check_training=False), space(x))
    assert torch.equal(FeatureSpace().map(x), x.reshape(2, 6))
    assert FeatureSpace().map(x, flatten=False) is x
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        space.map(torch.tensor(1.0), check_training=False)
