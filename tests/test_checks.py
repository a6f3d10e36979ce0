"""The shared argument predicates: what counts as a number, a scalar and a flag."""
import math
import re
import sys

import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.checks import (SEED_NOTE, as_scalar, check_flag, check_integer, is_integer, is_real, optional_integer,
                               positive_integer)


@pytest.mark.parametrize("value,integer,real", [
    (3, True, True), (np.int64(3), True, True), (2.0, False, True), (np.float32(0.5), False, True),
    (True, False, False), (np.True_, False, False), ("3", False, False), (None, False, False),
])
def test_numbers_count_and_bools_do_not(value, integer, real):
    assert is_integer(value) is integer and is_real(value) is real


def test_zero_dimensional_tensors_and_arrays_unwrap_to_their_number():
    assert as_scalar(torch.tensor(0.25)) == 0.25 and is_real(as_scalar(torch.tensor(0.25)))
    assert as_scalar(np.array(7)) == 7 and is_integer(as_scalar(np.array(7)))
    assert not is_real(as_scalar(torch.tensor(True)))                  # a bool tensor stays a bool
    vector = torch.tensor([1.0])
    assert as_scalar(vector) is vector                                  # only 0-d values unwrap


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_flags_accept_python_and_numpy_bools(value):
    assert check_flag("profile", value) is bool(value)


@pytest.mark.parametrize("value", ["no", 1, 0, None, torch.tensor(True)])
def test_anything_else_is_not_a_flag(value):
    with pytest.raises(ValueError, match=r"profile must be True or False, got "):
        check_flag("profile", value)


def test_positive_integers_come_back_as_ints_and_the_rest_is_named():
    assert positive_integer("chunk", np.int64(7)) == 7 and type(positive_integer("chunk", np.int64(7))) is int
    for bad in (0, -3, 2.5, True, "4", None):
        with pytest.raises(ValueError, match=r"chunk must be a positive integer, got "):
            positive_integer("chunk", bad)


def test_layouts_that_only_flatten_alike_are_refused_and_the_rest_pass():
    from kinetic_fm.checks import check_same_layout

    chw, hwc = torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5, 3)
    with pytest.raises(ValueError, match=r"samples holds items of shape \(4, 5, 3\) and train items of shape \(3, 4, 5\)"):
        check_same_layout(("samples", hwc), ("train", chw))
    check_same_layout(("samples", chw), ("train", chw.clone()))
    check_same_layout(("samples", chw.reshape(2, -1)), ("train", hwc))                # flat rows: any order
    check_same_layout(("samples", torch.zeros(2, 1, 4, 5)), ("train", np.zeros((3, 4, 5))))  # size-1 axes
    check_same_layout(("samples", torch.zeros(2, 3, 4)), ("train", torch.zeros(2, 5, 4)))  # sizes differ: later checks


def _channels_first_and_last_copies():
    torch.manual_seed(0)
    train = torch.rand(40, 3, 6, 6, dtype=torch.float64)
    return train[:8].permute(0, 2, 3, 1).contiguous(), train   # exact copies, saved channels-last


@pytest.mark.filterwarnings("ignore::UserWarning")  # 8 samples of 108 features: the FD bias warning
@pytest.mark.parametrize("metric", ["memorization", "nearest_neighbors", "frechet_distance",
                                    "precision_recall", "local_support", "kde_log_density"])
def test_every_set_metric_refuses_channels_last_samples_against_channels_first_data(metric):
    import kinetic_fm as kfm

    samples, train = _channels_first_and_last_copies()
    call = {"memorization": lambda a, b: kfm.memorization(a, b, bootstrap=0),
            "nearest_neighbors": lambda a, b: kfm.nearest_neighbors(a, b, 2),
            "frechet_distance": kfm.frechet_distance,
            "precision_recall": lambda a, b: kfm.precision_recall(b, a),
            "local_support": lambda a, b: kfm.local_support(a, b, k=1, ks=()),
            "kde_log_density": kfm.kde_log_density}[metric]
    with pytest.raises(ValueError, match="different layouts"):
        call(samples, train)
    call(samples.permute(0, 3, 1, 2), train)                 # one layout: accepted


def test_the_copies_are_found_once_the_layouts_agree():
    import kinetic_fm as kfm

    samples, train = _channels_first_and_last_copies()
    report = kfm.memorization(samples.permute(0, 3, 1, 2), train, bootstrap=0)
    assert report.fraction == 1.0 and report.nearest.tolist() == list(range(8))


def test_sets_on_different_value_scales_warn_and_one_scale_does_not():
    import warnings

    from kinetic_fm.checks import ValueRangeWarning, check_same_space

    torch.manual_seed(0)
    signed = torch.rand(30, 3, 4, 4) * 2 - 1                        # [-1, 1]
    with pytest.warns(ValueRangeWarning, match=r"samples spans \[0, 255\] .*uint8"):
        check_same_space(("samples", ((signed + 1) * 127.5).round().to(torch.uint8)), ("train", signed))
    with pytest.warns(ValueRangeWarning, match=r"non-negative, the other spans about as far below zero"):
        check_same_space(("samples", signed.numpy()), ("train", (signed + 1) / 2))
    unit = (signed + 1) / 2                                          # [0, 1] data, as ToTensor gives
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValueRangeWarning)
        check_same_space(("samples", signed * 1.3), ("train", signed))             # an imperfect sampler
        check_same_space(("samples", torch.randn(30, 48) * 4), ("train", signed))  # noise against data
        check_same_space(("noise", torch.randn(30, 48)), ("data", unit))           # a noise baseline, [0, 1]
        check_same_space(("samples", unit + 0.5 * torch.randn(30, 3, 4, 4)), ("train", unit))  # early model
        check_same_space(("samples", unit), ("train", unit - 0.01))                # both [0, 1]
        check_same_space(("samples", torch.zeros(3, 48)), ("train", signed))        # all zeros: no scale
        check_same_space(("samples", [[1.0, 2.0]]), ("train", ["a", "b"]))         # not numbers: skipped
        check_same_space(("samples", torch.rand(2, 3)), ("train", -torch.rand(2, 3)))  # too few values to judge
        many = torch.rand(10_000, 48) * 2 - 1
        many[0] *= 30                                                               # one diverged sample
        check_same_space(("samples", many), ("train", signed))
        a_few_inf = torch.rand(1000, 48)
        a_few_inf.view(-1)[::400] = float("inf")                 # 0.25 %: the 99.9 % quantile is inf
        check_same_space(("samples", a_few_inf), ("train", torch.rand(1000, 48)))


def test_the_scale_check_reads_every_pixel_position_of_large_image_sets():
    """50,000 MNIST-sized images hold 39.2M values; an even stride of numel // 100,000 = 392 read
    pixels 0 and 392 of every image only, background in MNIST, and the uint8 trap went unseen."""
    from kinetic_fm.checks import ValueRangeWarning, check_same_space

    g = torch.Generator().manual_seed(0)
    ink = torch.rand(50_000, 784, generator=g)
    ink[:, [0, 392]] = 0.0                                   # background where the stride looked
    with pytest.warns(ValueRangeWarning, match="uint8"):
        check_same_space(("samples", ink), ("train", (ink * 255).to(torch.uint8)))
    with pytest.warns(ValueRangeWarning, match="uint8"):  # a transposed NumPy array, read in place
        check_same_space(("samples", ink.numpy().T), ("train", (ink.numpy().T * 255).astype(np.uint8)))


@pytest.mark.filterwarnings("ignore::kinetic_fm.metrics.fidelity.FrechetBiasWarning")
@pytest.mark.parametrize("metric", ["memorization", "frechet_distance", "precision_recall",
                                    "local_support", "kde_log_density"])
def test_every_set_metric_warns_about_copies_saved_as_uint8(metric):
    """Exact copies of [-1, 1] training images saved as uint8 are not found (F_mem 0 of 8): the
    metrics say why instead of answering quietly."""
    import kinetic_fm as kfm
    from kinetic_fm.checks import ValueRangeWarning

    _, train = _channels_first_and_last_copies()
    train = train * 2 - 1
    copies = ((train[:8] + 1) * 127.5).round().to(torch.uint8)
    call = {"memorization": lambda a, b: kfm.memorization(a, b, bootstrap=0),
            "frechet_distance": kfm.frechet_distance,
            "precision_recall": lambda a, b: kfm.precision_recall(b, a),
            "local_support": lambda a, b: kfm.local_support(a, b, k=1, ks=()),
            "kde_log_density": kfm.kde_log_density}[metric]
    with pytest.warns(ValueRangeWarning, match="uint8"):
        result = call(copies, train)
    if metric == "memorization":
        assert result.fraction == 0.0                                 # what the warning is about
        assert kfm.memorization(copies / 127.5 - 1, train, bootstrap=0).fraction == 1.0


# --- arrays as the public functions receive them: other byte orders, pandas tables ----------
_SET_METRICS = {
    "memorization": (lambda a, b: kfm.memorization(a, b, bootstrap=0), "ratio"),
    "nearest_neighbors": (lambda a, b: kfm.nearest_neighbors(a, b, 2), "distances"),
    "frechet_distance": (lambda a, b: kfm.frechet_distance(a, b), "value"),
    "precision_recall": (lambda a, b: kfm.precision_recall(b, a), "precision"),
    "local_support": (lambda a, b: kfm.local_support(a, b, k=2, ks=(1,)), "radii"),
    "kde_log_density": (lambda a, b: kfm.kde_log_density(a, b), "log_density"),
}


def _two_sets():
    rng = np.random.default_rng(3)
    return rng.normal(size=(30, 4)), rng.normal(size=(50, 4))


def _as_list(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


@pytest.mark.filterwarnings("ignore::UserWarning")  # 30 samples of 4 features: the FD bias warning
@pytest.mark.parametrize("metric", sorted(_SET_METRICS))
def test_every_set_metric_reads_big_endian_arrays_as_their_values(metric):
    # torch refuses arrays in non-native byte order ("conversion between byte orders is not
    # supported"); they come from FITS files or data written on another machine
    call, field = _SET_METRICS[metric]
    samples, reference = _two_sets()
    want = _as_list(getattr(call(samples, reference), field))
    got = call(samples.astype(">f8"), reference.astype(">f8"))
    assert _as_list(getattr(got, field)) == want


def test_the_kts_gain_reads_a_big_endian_array_of_times():
    times = np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    kts = kfm.KTS(alpha0=0.2, beta0=0.02)
    got = kts(times.astype(">f8"))
    assert got.dtype.isnative and got.tolist() == kts(times).tolist()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("metric", sorted(_SET_METRICS))
def test_every_set_metric_hands_torch_writable_arrays_from_pandas_tables(metric, monkeypatch):
    # pandas' copy-on-write hands out read-only views, and torch warns of a non-writable array
    # (once per process, so the spy below looks at what torch is given, call by call)
    pd = pytest.importorskip("pandas")
    seen = []
    real = torch.as_tensor

    def spy(data, *args, **kwargs):
        if isinstance(data, np.ndarray):
            seen.append(data.flags.writeable)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", spy)
    call, field = _SET_METRICS[metric]
    samples, reference = _two_sets()
    want = _as_list(getattr(call(samples, reference), field))
    seen.clear()
    got = call(pd.DataFrame(samples), pd.DataFrame(reference))
    assert seen and all(seen)
    assert _as_list(getattr(got, field)) == want


def test_pandas_tables_raise_no_warning_in_the_density_and_fidelity_metrics():
    # torch's non-writable warning is given once per process: a fresh one sees the first offender
    import subprocess
    import sys

    pytest.importorskip("pandas")
    script = """if True:
        import warnings
        import numpy as np, pandas as pd
        import kinetic_fm as kfm
        rng = np.random.default_rng(3)
        a, b = pd.DataFrame(rng.normal(size=(40, 3))), pd.DataFrame(rng.normal(size=(60, 3)))
        warnings.simplefilter("error")
        kfm.kde_log_density(a, b)
        kfm.local_support(a, b, k=2, ks=(1,))
        kfm.frechet_distance(a, b)
        kfm.precision_recall(a, b)
        kfm.memorization(a, b, bootstrap=0)
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_read_only_arrays_raise_no_warning_in_the_set_metrics():
    # np.load(path, mmap_mode="r") (a training set too large to copy) and other read-only arrays:
    # torch warned "The given NumPy array is not writable ... undefined behavior" once per process,
    # though the metrics only read them; a fresh process sees the first offender
    import subprocess
    import sys

    script = """if True:
        import warnings
        import numpy as np
        import kinetic_fm as kfm
        rng = np.random.default_rng(3)
        a, b = rng.normal(size=(40, 3)), rng.normal(size=(60, 3))
        want = kfm.memorization(a, b, bootstrap=0).ratio.tolist()
        a.flags.writeable = b.flags.writeable = False
        warnings.simplefilter("error")
        assert kfm.memorization(a, b, bootstrap=0).ratio.tolist() == want
        kfm.nearest_neighbors(a, b, k=2)
        kfm.kde_log_density(a, b)
        kfm.local_support(a, b, k=2, ks=(1,))
        kfm.frechet_distance(a, b)
        kfm.precision_recall(a, b)
        kfm.EmpiricalFlow(b)
        assert (a == np.random.default_rng(3).normal(size=(40, 3))).all()       # read, never written
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# --- integer arguments: one rule, 0-d tensors and arrays included -----------------------------
@pytest.mark.parametrize("value", [3, np.int64(3), np.array(3), torch.tensor(3), torch.tensor(3, dtype=torch.uint8)])
def test_an_integer_argument_may_be_a_zero_dimensional_tensor_or_array(value):
    assert check_integer("k", value, 1, 9) == 3 and type(check_integer("k", value, 1, 9)) is int
    assert positive_integer("chunk", value) == 3


@pytest.mark.parametrize("value, low, high, message", [
    (torch.tensor(True), 0, None, r"seed must be a non-negative integer, got tensor\(True\)"),
    (np.array(2.0), 1, None, r"seed must be a positive integer, got array\(2\.\)"),
    (torch.tensor([3]), 1, 9, r"seed must be an integer in \[1, 9\], got tensor\(\[3\]\)"),
    (-1, 0, None, "seed must be a non-negative integer, got -1"),
    (10, 1, 9, r"seed must be an integer in \[1, 9\], got 10"),
    (1, 2, None, "seed must be an integer >= 2, got 1"),
    (2.5, None, None, "seed must be an integer, got 2.5"),
    (-1, 0, 2**63 - 1, r"seed must be an integer in \[0, 2\*\*63 - 1\], got -1"),   # not 19 digits
    (1, 2, 2**53, r"seed must be an integer in \[2, 2\*\*53\], got 1"),
    (0, 1, 1_000_000, r"seed must be an integer in \[1, 1_000_000\], got 0"),   # not a power of two
])
def test_an_integer_argument_out_of_range_or_of_another_kind_is_named(value, low, high, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_integer("seed", value, low, high)


def test_public_integer_arguments_accept_zero_dimensional_tensors_and_arrays():
    # precision_recall(k=torch.tensor(3)) and memorization(seed=np.array(3)) were refused while
    # steps=torch.tensor(4) or kde_log_density(seed=np.array(3)) went through
    samples, reference = _two_sets()
    want = kfm.precision_recall(reference, samples, k=3)
    for k in (torch.tensor(3), np.array(3)):
        got = kfm.precision_recall(reference, samples, k=k)
        assert (got.precision, got.recall, got.k) == (want.precision, want.recall, 3)
    want = kfm.memorization(samples, reference, bootstrap=100, seed=3)
    for seed, bootstrap in ((np.array(3), np.array(100)), (torch.tensor(3), torch.tensor(100))):
        got = kfm.memorization(samples, reference, bootstrap=bootstrap, seed=seed)
        assert (got.fraction, got.ci) == (want.fraction, want.ci)
    want = kfm.nearest_neighbors(samples, reference, 2)
    got = kfm.nearest_neighbors(samples, reference, torch.tensor(2), margin=np.array(4), chunk=torch.tensor(16))
    assert torch.equal(got.indices, want.indices) and torch.equal(got.distances, want.distances)


def _integer_sites():
    """(argument, low, high, call(value)) for public integer arguments that had their own checks;
    those that also take None are in OPTIONAL_SITES."""
    from kinetic_fm.data import PointDataset, subset
    from kinetic_fm.sampling.grids import time_grid

    gen = torch.Generator().manual_seed(0)
    x0, train = torch.randn(3, 2, generator=gen), torch.randn(5, 2, generator=gen)
    points = PointDataset(torch.randn(6, 2, generator=gen), None, "test")
    spread = np.arange(10.0)
    return [
        ("steps", 1, None, lambda v: kfm.sample(lambda x, t: -x, x0, steps=v).x),
        ("max_steps", 1, None, lambda v: kfm.sample(lambda x, t: -x, x0, steps=2, max_steps=v).x),
        ("steps", 1, None, lambda v: time_grid("uniform", v)),
        ("seed", 0, 2**32 - 1, lambda v: kfm.kde_log_density(x0, train, "median", seed=v).log_density),
        ("k", 1, None, lambda v: kfm.local_support(x0, train, k=v, ks=()).radii),
        ("bootstrap", 0, None, lambda v: kfm.spearman(spread, spread ** 2, bootstrap=v, permutations=0).ci_low),
        ("permutations", 0, None, lambda v: kfm.pearson(spread, spread ** 2, bootstrap=0, permutations=v).p_perm),
        ("seed", 0, None, lambda v: kfm.spearman(spread, -spread, bootstrap=20, permutations=0, seed=v).ci_low),
        ("batch_chunk", 1, None, lambda v: kfm.EmpiricalFlow(train, batch_chunk=v)(x0, 0.5)),
        ("truncate", 1, 5, lambda v: kfm.EmpiricalFlow(train, truncate=v)(x0, 0.5)),
        ("k", 1, 5, lambda v: kfm.EmpiricalFlow(train).posterior(x0, 0.5, k=v).weights),
        ("num_timesteps", 2, 2**53, lambda v: kfm.DiscreteTime(lambda x, s: x * s[:, None], num_timesteps=v)(x0, 0.5)),
        ("n", 1, 6, lambda v: subset(points, n=v).points),
        ("seed", 0, 2**32 - 1, lambda v: subset(points, n=3, seed=v).points),
    ]


def _same(a, b):
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)) if not isinstance(a, torch.Tensor) \
        else torch.equal(a, b)


OPTIONAL_SITES = (8, 9)  # EmpiricalFlow's batch_chunk and truncate: None is the default
NOTES = {3: SEED_NOTE, 9: "the training items", 10: "the training items", 12: "the available items",
         13: SEED_NOTE}  # a bound's meaning


@pytest.mark.parametrize("site", range(14))
def test_public_integer_arguments_are_read_by_the_shared_check(site):
    # steps, max_steps, the KDE seed, the stats settings, EmpiricalFlow's batch_chunk, truncate and
    # posterior k, DiscreteTime and data.subset had their own checks and wording; subset(n=) refused
    # a 0-d tensor and took seed=2.5 as 2 and seed=True as 1
    name, low, high, call = _integer_sites()[site]
    value = 3 if high is None else min(3, high)
    want = call(value)
    for zero_d in (torch.tensor(value), np.array(value), np.int64(value)):
        assert _same(call(zero_d), want)
    check = optional_integer if site in OPTIONAL_SITES else check_integer
    for bad in (True, 2.5, torch.tensor(2.5)):
        try:
            check(name, bad, low, high, note=NOTES.get(site, ""))
        except ValueError as err:
            message = str(err)
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            call(bad)
    if low is not None:
        with pytest.raises(ValueError, match=f"^{name} must be .*, got {low - 1}$"):
            call(low - 1)


def test_a_note_says_what_the_range_is_after_it():
    with pytest.raises(ValueError, match=r"^n must be an integer in \[1, 6\] \(the available items\), got 9$"):
        check_integer("n", 9, 1, 6, note="the available items")
    with pytest.raises(ValueError, match=r"^n must be None or a positive integer \(the rows\), got 0$"):
        optional_integer("n", 0, 1, note="the rows")
    assert check_integer("n", np.int64(6), 1, 6, note="the available items") == 6


@pytest.mark.parametrize("value, low, high, message", [
    (0, 1, None, "batch_chunk must be None or a positive integer, got 0"),
    (2.5, 1, 9, r"batch_chunk must be None or an integer in \[1, 9\], got 2.5"),
    (True, 0, None, "batch_chunk must be None or a non-negative integer, got True"),
])
def test_an_optional_integer_argument_says_none_is_allowed_too(value, low, high, message):
    assert optional_integer("batch_chunk", None, low, high) is None
    assert optional_integer("batch_chunk", np.array(3), low, high) == 3
    with pytest.raises(ValueError, match=f"^{message}$"):
        optional_integer("batch_chunk", value, low, high)


def test_empirical_flow_says_its_integer_options_may_be_none():
    # their own checks said "must be None or ..."; the shared check had dropped the None
    train = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^batch_chunk must be None or a positive integer, got 0$"):
        kfm.EmpiricalFlow(train, batch_chunk=0)
    with pytest.raises(ValueError, match=r"^truncate must be None or an integer in \[1, 5\] \(the training items\), got 6$"):
        kfm.EmpiricalFlow(train, truncate=6)


class _NoNotes(RuntimeError):
    """An exception as Python 3.10 makes them: no add_note."""

    @property
    def add_note(self):
        raise AttributeError("add_note")


def test_a_hint_reaches_the_message_where_exceptions_have_no_notes():
    # the library's hints (call conventions, extras, dopri5's shrinking batch) went out with
    # BaseException.add_note only, so on Python 3.10 they were silently dropped
    from kinetic_fm.checks import add_note

    err = _NoNotes("mat1 and mat2 shapes cannot be multiplied")
    add_note(err, "first hint")
    add_note(err, "second hint")
    assert err.args == ("mat1 and mat2 shapes cannot be multiplied\nfirst hint\nsecond hint",)
    assert err.__notes__ == ["first hint", "second hint"]
    several = _NoNotes(2, "No such file")          # printed from its arguments: left as it is
    add_note(several, "hint")
    assert several.args == (2, "No such file") and several.__notes__ == ["hint"]
    bare = _NoNotes()
    add_note(bare, "hint")
    assert bare.args == () and bare.__notes__ == ["hint"]
    native = RuntimeError("boom")
    add_note(native, "hint")
    assert native.__notes__ == ["hint"]
    assert str(native) == ("boom" if sys.version_info >= (3, 11) else "boom\nhint")  # 3.11+ prints notes itself


def test_torch_readable_reads_object_arrays_of_real_numbers_as_numbers():
    # torch refuses object arrays ("can't convert np.ndarray of type numpy.object_"): a pandas
    # object column of ints was refused as "holds no numbers"
    from fractions import Fraction

    from kinetic_fm.checks import first_non_number, torch_readable

    ints = torch_readable(np.array([[1, 2], [np.int16(3), 2**62]], dtype=object))
    assert ints.dtype == np.int64 and ints.tolist() == [[1, 2], [3, 2**62]]
    mixed = torch_readable(np.array([1, 2.5, np.float32(0.5), Fraction(1, 4)], dtype=object))
    assert mixed.dtype == np.float64 and mixed.tolist() == [1.0, 2.5, 0.5, 0.25]
    for kept in ([1, None], [1, "2"], [1, True], [2**70, 1], [1j, 2]):   # refused by the caller, by name
        given = np.array(kept, dtype=object)
        assert torch_readable(given) is given
    assert first_non_number(np.array([[1, 2], [3, None]], dtype=object)) == ((1, 1), None)
    assert first_non_number(np.array([2**70, 1.5], dtype=object)) is None


def _percent_refusals():
    """Each public fraction given as a percent: (call, the fraction it meant)."""
    import kinetic_fm as kfm
    from kinetic_fm.studies.config import SemanticsConfig

    g = torch.Generator().manual_seed(0)
    samples, train = torch.randn(6, 3, generator=g), torch.randn(9, 3, generator=g)
    x, y = np.arange(12.0), np.arange(12.0) ** 2
    return [
        (lambda: kfm.memorization(samples, train, confidence=95), "0.95"),
        (lambda: kfm.memorization(samples, train, threshold=33), "0.33"),
        (lambda: kfm.fraction_interval(3, 10, confidence=99), "0.99"),
        (lambda: kfm.spearman(x, y, confidence=90), "0.9"),
        (lambda: kfm.compare_groups(x, y, quantile=20), "0.2"),
        (lambda: kfm.sample(lambda x, t: x, torch.zeros(2, 3), steps=2, split=60), "0.6"),
        (lambda: kfm.KTS(tau_split=60), "0.6"),
        (lambda: SemanticsConfig(quantile=25), "0.25"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_a_fraction_given_as_a_percent_is_refused_with_the_fraction_it_meant(index):
    # confidence=95 was refused as "must lie in (0, 1), got 95" only; still refused, now with the fraction
    call, meant = _percent_refusals()[index]
    with pytest.raises(ValueError, match=rf"got [\d.]+\b.*; did you mean {re.escape(meant)}\?$"):
        call()


def test_a_value_beyond_a_percent_or_whose_hundredth_is_outside_the_range_gets_no_guess():
    import kinetic_fm as kfm

    x, y = np.arange(12.0), np.arange(12.0) ** 2
    for call in (lambda: kfm.fraction_interval(3, 10, confidence=101),
                 lambda: kfm.fraction_interval(3, 10, confidence=1),
                 lambda: kfm.fraction_interval(3, 10, confidence=100),   # 1.0 is outside (0, 1) too
                 lambda: kfm.compare_groups(x, y, quantile=60)):       # 0.6 is outside (0, 0.5]
        with pytest.raises(ValueError) as caught:
            call()
        assert "did you mean" not in str(caught.value)


def test_percent_hint_admits_the_hundredth_up_to_its_bound():
    # the bound is at most high (quantile: 0.5 admitted), or below it (open_high: 1.0 refused in (0, 1))
    from kinetic_fm.checks import percent_hint

    assert percent_hint(50, 0.5) == "; did you mean 0.5?"
    assert percent_hint(51, 0.5) == ""
    assert percent_hint(100) == "; did you mean 1?"
    assert percent_hint(100, open_high=True) == ""
    assert percent_hint(99, open_high=True) == "; did you mean 0.99?"
    assert percent_hint(torch.tensor(2), open_high=True) == "; did you mean 0.02?"
    assert percent_hint(1.99) == percent_hint(101) == percent_hint("95") == ""


def test_a_value_just_above_one_reads_as_a_slip_not_a_percent():
    # split=1.5 got "did you mean 0.015?": a value in (1, 2) is a fraction mistyped, not a percent
    import kinetic_fm as kfm

    x, y = np.arange(12.0), np.arange(12.0) ** 2
    for value, hinted in ((1.5, False), (1.99, False), (2, True), (40, True)):
        with pytest.raises(ValueError) as caught:
            kfm.compare_groups(x, y, quantile=value)
        assert ("did you mean" in str(caught.value)) == hinted, (value, str(caught.value))


def test_a_confidence_reads_as_a_percent_from_50_only():
    # confidence=2 got "; did you mean 0.02?", a coverage no one asks for: 2 is rather 2 sigma or a slip for 0.95.
    # A coverage below one half is no interval anyone reports, so only 50 to 99.x read as a percent
    import kinetic_fm as kfm

    x, y = np.arange(12.0), np.arange(12.0) ** 2
    for value, hint in ((2, ""), (3, ""), (20, ""), (49.9, ""), (50, "; did you mean 0.5?"),
                        (95, "; did you mean 0.95?"), (99.9, "; did you mean 0.999?"), (100, "")):
        for call in (lambda: kfm.fraction_interval(3, 10, confidence=value),
                     lambda: kfm.spearman(x, y, bootstrap=0, permutations=0, confidence=value)):
            with pytest.raises(ValueError) as caught:
                call()
            assert str(caught.value) == f"confidence must lie in (0, 1), got {value!r}{hint}"


def test_a_refused_fraction_reads_as_a_percent_from_one_named_value():
    # percent= was True (from 2) or a number (from that number), told apart by `is True`: percent=1 meant from 1
    from kinetic_fm.checks import PERCENT_FROM, SPLIT_PERCENT_FROM, check_unit_number, inside_unit_interval

    assert (PERCENT_FROM, SPLIT_PERCENT_FROM) == (2.0, 10.0)
    for check in (check_unit_number, inside_unit_interval):
        for value, percent_from, hint in ((5, None, ""), (5, PERCENT_FROM, "; did you mean 0.05?"),
                                          (5, SPLIT_PERCENT_FROM, ""), (1.5, 1, "; did you mean 0.015?"),
                                          (1.5, PERCENT_FROM, ""), (60, SPLIT_PERCENT_FROM, "; did you mean 0.6?")):
            with pytest.raises(ValueError) as caught:
                check("x", value, percent_from=percent_from)
            assert str(caught.value).endswith(f"got {value!r}{hint}"), (check, value, percent_from, str(caught.value))


def test_kfm_memorization_threshold_as_a_percent_names_the_fraction(tmp_path, capsys):
    from kinetic_fm.cli import main

    np.save(tmp_path / "s.npy", np.zeros((4, 2), np.float32))
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "s.npy"),
                 "--threshold", "33", "--no-progress"]) == 2
    assert "--threshold must lie in (0, 1), got 33.0; did you mean 0.33?" in capsys.readouterr().err


def test_a_split_time_below_ten_is_not_read_as_a_percent(tmp_path, capsys):
    """split and tau_split are a time on the path: 60 reads as 60 % of it, but 2 (two halves?) read
    as "did you mean 0.02?", a split at the path's very start that splits no early from late energy."""
    import kinetic_fm as kfm
    from kinetic_fm.cli import main

    for value, hint in ((2, None), (5, None), (9.5, None), (10, "0.1"), (60, "0.6")):
        # the value as typed; KTS reads it as a float first
        for call, typed in ((lambda: kfm.sample(lambda x, t: x, torch.zeros(2, 3), steps=2, split=value), value),
                            (lambda: kfm.KTS(tau_split=value), float(value))):
            with pytest.raises(ValueError) as caught:
                call()
            message = str(caught.value)
            assert message.endswith(f"got {typed!r}" + (f"; did you mean {hint}?" if hint else "")), message
    assert main(["sample", "--field", "mixture", "--dim", "2", "--n", "4", "--steps", "2", "--split", "2",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.rstrip().endswith("--split must be a number in [0, 1], got 2.0")
    assert not (tmp_path / "run").exists()


def test_a_threshold_above_one_reads_as_the_ratio_inverted_below_ten_and_as_a_percent_above(tmp_path, capsys):
    """The gap ratio d1/d2 < threshold (1/3) is also stated as d2 > 3 d1: threshold=3 meant 1/3, not
    the "did you mean 0.03?" it got; 33 still reads as 33 %."""
    import kinetic_fm as kfm
    from kinetic_fm.cli import main

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for value, hint in ((3, "1/3 = 0.333"), (2, "1/2 = 0.5"), (1.5, "1/1.5 = 0.667"), (10, "0.1"), (33, "0.33"),
                        (100, None), (1, None), (1.001, "1/1.001 = 0.999"),
                        (1.0001, None), (1.0004, None)):   # "did you mean 1/1.0001 = 1?", which is refused too
        with pytest.raises(ValueError) as caught:
            kfm.memorization(x, x, threshold=value)
        message = str(caught.value)
        assert message.endswith(f"; did you mean {hint}?" if hint else f"got {value!r}"), message
    np.save(tmp_path / "s.npy", np.zeros((4, 2), np.float32))
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "s.npy"),
                 "--threshold", "3", "--no-progress"]) == 2
    assert "--threshold must lie in (0, 1), got 3.0; did you mean 1/3 = 0.333?" in capsys.readouterr().err
