import copy
import json
import math
import re
import warnings

import pytest
import torch
from torch import nn

import kinetic_fm as kfm
from kinetic_fm.data import GaussianMixture, load_digits
from kinetic_fm.models import TrainConfig, UNet, VelocityMLP, checkpoint_steps, load_model, train
from kinetic_fm.models.checkpoint import load_state, load_weights, read_metadata


def _mixture_data():
    gmm = GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]), torch.tensor([0.5, 0.3, 0.2]), 0.5)
    return gmm, gmm.sample(8000, seed=0)


def _cases():
    gmm, ds = _mixture_data()
    digits = load_digits(n=64, seed=0)
    return {
        "mlp-class-conditional": (lambda: VelocityMLP(2, hidden=16, depth=1, num_classes=3), ds.points[:500], ds.labels[:500]),
        "unet-dropout": (lambda: UNet(1, base_channels=8, channel_mults=(1, 2), dropout=0.2), digits.images, None),
    }


def test_checkpoint_steps_log_spaced():
    assert checkpoint_steps(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert checkpoint_steps(64) == [1, 2, 4, 8, 16, 32, 64]
    assert checkpoint_steps(10, (3, 10)) == [3, 10]
    assert checkpoint_steps(10, "none") == []
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        checkpoint_steps(10, (0, 5))


@pytest.mark.parametrize("device", ["cpu", "fake_cuda"])
@pytest.mark.parametrize("case", ["mlp-class-conditional", "unet-dropout"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, case, device, stop_at):
    # fake_cuda keeps a separate CUDA default generator, as a GPU does: dropout on the device
    # draws from it, so resume.pt must hold its state too (it held only the CPU's)
    if device == "fake_cuda":
        from fake_cuda import fake_cuda

        with fake_cuda():
            _interrupt_and_resume(tmp_path, case, "cuda", stop_at)
    else:
        _interrupt_and_resume(tmp_path, case, "cpu", stop_at)


def _interrupt_and_resume(tmp_path, case, device, stop_at):
    make_on_cpu, data, labels = _cases()[case]
    make = lambda: make_on_cpu().to(device)  # noqa: E731
    config = TrainConfig(steps=20, batch_size=8, lr=1e-2, ema_decay=0.9, seed=7, save_every=5, label_dropout=0.3)

    torch.manual_seed(0)
    full = train(make(), data, config, labels=labels, out=tmp_path / "full")

    torch.manual_seed(0)
    with pytest.raises(stop_at.error):  # "killed" after step 13: steps 11-13 are lost, resume.pt is at step 10
        train(make(), data, config, labels=labels, out=tmp_path / "cut", callback=stop_at(13))
    assert load_state(tmp_path / "cut" / "resume.pt")["step"] == 10
    torch.manual_seed(123)  # the resumed process starts in another RNG state and with fresh weights
    resumed = train(make(), data, config, labels=labels, out=tmp_path / "cut", resume=True)

    for a, b in ((full.model, resumed.model), (full.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(full.losses, resumed.losses)
    w1, w2 = load_weights(tmp_path / "full" / "final.safetensors"), load_weights(tmp_path / "cut" / "final.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    s1, s2 = load_state(tmp_path / "full" / "resume.pt"), load_state(tmp_path / "cut" / "resume.pt")
    for k, v in s1["optimizer"]["state"].items():
        assert all(torch.equal(v[n], s2["optimizer"]["state"][k][n]) for n in v)


def test_resuming_on_another_kind_of_device_warns(tmp_path, stop_at):
    from fake_cuda import fake_cuda

    _, ds = _mixture_data()
    config = TrainConfig(steps=6, batch_size=8, seed=3, save_every=2, checkpoints="none")
    with pytest.raises(stop_at.error):
        train(VelocityMLP(2, hidden=8, depth=1), ds.points[:64], config, out=tmp_path, callback=stop_at(3))
    with fake_cuda(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(VelocityMLP(2, hidden=8, depth=1).to("cuda"), ds.points[:64], config, out=tmp_path, resume=True)
    said = [w for w in caught if "on cuda:0, saved on the CPU: training goes on" in str(w.message)]
    assert len(said) == 1 and said[0].category is UserWarning
    assert said[0].filename == __file__   # the caller's train(...), not train()'s own body (helper-315)


def test_training_is_deterministic_by_seed_and_writes_checkpoints(tmp_path):
    _, ds = _mixture_data()
    config = TrainConfig(steps=10, batch_size=16, seed=1, checkpoints=(1, 5, 10))
    torch.manual_seed(0)
    a = train(VelocityMLP(2, hidden=16, depth=1), ds.points, config, out=tmp_path / "a")
    torch.manual_seed(0)
    b = train(VelocityMLP(2, hidden=16, depth=1), ds.points, config)
    torch.manual_seed(0)
    c = train(VelocityMLP(2, hidden=16, depth=1), ds.points, TrainConfig(steps=10, batch_size=16, seed=2))
    assert torch.equal(a.losses, b.losses)  # writing files changes nothing
    assert not torch.equal(b.losses, c.losses)  # same initial weights, different seed
    torch.manual_seed(0)
    b2 = train(VelocityMLP(2, hidden=16, depth=1), ds.points, config)
    assert torch.equal(b.losses, b2.losses)
    assert sorted(a.checkpoints) == [1, 5, 10]
    x, t = torch.randn(4, 2), torch.rand(4)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "a")(x, t), a.ema(x, t))
        assert torch.equal(load_model(a.checkpoints[10], weights="model")(x, t), a.model(x, t))
        assert not torch.equal(load_model(a.checkpoints[1])(x, t), a.ema(x, t))


@pytest.mark.parametrize("case", ["mlp-class-conditional", "unet-dropout"])
def test_the_checkpoint_schedule_changes_no_weight(tmp_path, case):
    # kfm reproduce trains its general net without checkpoints, and resumes older workspaces' with
    # them: writing a checkpoint must draw no random number and take no optimizer step
    make, data, labels = _cases()[case]
    runs = {}
    for schedule in ("log2", "none"):
        torch.manual_seed(0)
        config = TrainConfig(steps=12, batch_size=8, lr=1e-2, ema_decay=0.9, seed=5, save_every=4,
                             label_dropout=0.3, checkpoints=schedule)
        runs[schedule] = train(make(), data, config, labels=labels, out=tmp_path / schedule)
    assert sorted(runs["log2"].checkpoints) == [1, 2, 4, 8, 12] and runs["none"].checkpoints == {}
    assert torch.equal(runs["log2"].losses, runs["none"].losses)
    for name in ("final.safetensors", "resume.pt"):
        a, b = (load_state(tmp_path / s / name) if name == "resume.pt" else load_weights(tmp_path / s / name)
                for s in ("log2", "none"))
        flat_a, flat_b = _tensors(a), _tensors(b)
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def _tensors(tree, prefix=""):
    """Every tensor in a nested dict/list (a resume state), by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


def test_resume_refuses_changed_settings(tmp_path):
    _, ds = _mixture_data()
    train(VelocityMLP(2, hidden=8, depth=1), ds.points, TrainConfig(steps=4, batch_size=4), out=tmp_path)
    resumed = []   # on_resume: called only for a resume accepted, with the step it goes on from
    with pytest.raises(ValueError, match="train.lr"):
        train(VelocityMLP(2, hidden=8, depth=1), ds.points, TrainConfig(steps=8, batch_size=4, lr=0.5),
              out=tmp_path, resume=True, on_resume=resumed.append)
    assert resumed == []
    with pytest.raises(ValueError, match="model"):
        train(VelocityMLP(2, hidden=16, depth=1), ds.points, TrainConfig(steps=8, batch_size=4), out=tmp_path, resume=True)
    with pytest.raises(ValueError, match="info"):               # same shape, other data
        train(VelocityMLP(2, hidden=8, depth=1), ds.points, TrainConfig(steps=8, batch_size=4), out=tmp_path,
              resume=True, info={"data": "moons"})
    more = train(VelocityMLP(2, hidden=8, depth=1), ds.points, TrainConfig(steps=8, batch_size=4), out=tmp_path,
                 resume=True, on_resume=resumed.append)
    assert more.losses.shape == (8,) and (more.losses > 0).all() and resumed == [4]
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="already holds a training run"):
        train(VelocityMLP(2, hidden=8, depth=1), ds.points, TrainConfig(steps=2, batch_size=4), out=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_bad_inputs():
    with pytest.raises(ValueError, match="class-conditional"):
        train(VelocityMLP(2, hidden=8, depth=1, num_classes=2), torch.randn(10, 2), TrainConfig(steps=1))
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    for bad in (-1.0, 0.0, math.nan):
        with pytest.raises(ValueError, match="grad_clip must be None or a finite number > 0"):
            TrainConfig(grad_clip=bad)
    for bad in (0.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            TrainConfig(lr=bad)
    with pytest.raises(ValueError, match="save_every must be a positive integer, got 0"):
        TrainConfig(save_every=0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            TrainConfig(weight_decay=bad)


def test_an_lr_whose_first_adamw_step_overflows_float32_is_refused_with_its_bound():
    # AdamW's first step is lr / (1 - beta1), passed to float32 weights as a float: above float32's
    # largest number it failed at step 1 ("value cannot be converted to type float without overflow")
    largest = float(torch.finfo(torch.float32).max)
    for beta1 in (0.9, 0.0):
        bound = largest * (1 - beta1)

        def first_step(lr):
            net = torch.nn.Linear(3, 3)
            net(torch.randn(4, 3)).sum().backward()
            torch.optim.AdamW(net.parameters(), lr=lr, betas=(beta1, 0.999), foreach=True).step()

        first_step(bound)                                          # the bound itself steps
        assert TrainConfig(lr=bound, betas=(beta1, 0.999)).lr == bound
        above = math.nextafter(bound, math.inf)
        with pytest.raises(RuntimeError, match="overflow"):
            first_step(above)
        for bad in (above, 1e300):
            with pytest.raises(ValueError, match=re.escape(
                    f"lr must be a finite number in (0, {bound:.3g}], got {bad!r}: AdamW's first step, "
                    f"lr / (1 - β1) with β1 = {beta1}, must not exceed float32's largest number, 3.4e+38")):
                TrainConfig(lr=bad, betas=(beta1, 0.999))


def test_an_lr_times_weight_decay_of_one_or_more_warns_once_with_both_values_and_the_product():
    # helper-256: AdamW's decoupled decay multiplies the weights by 1 - lr·weight_decay at each step, before its
    # adaptive step; at 1 or more that zeroes them or flips their sign, and the run went on without a word
    import warnings

    net = nn.Linear(3, 3, bias=False)
    before = net.weight.detach().clone()
    net.weight.grad = torch.zeros_like(net.weight)               # no adaptive step: the decay alone
    torch.optim.AdamW(net.parameters(), lr=0.5, weight_decay=4.0, foreach=True).step()
    assert torch.equal(net.weight.detach(), -before)             # 1 - 0.5·4 = -1: every sign flipped
    for lr, weight_decay, product in ((0.5, 4.0, "2"), (0.25, 4.0, "1")):
        with pytest.warns(UserWarning) as caught:
            TrainConfig(lr=lr, weight_decay=weight_decay)
        assert [str(w.message) for w in caught] == [
            f"lr = {lr} and weight_decay = {weight_decay} multiply to {product} >= 1: AdamW's decoupled weight decay "
            f"multiplies the weights by 1 - {product} = {1 - float(product):g} at each step at this lr, which zeroes "
            f"them or flips their sign; training goes on, but weight decay is meant to shrink them a little "
            f"(a product well below 1)"]
        assert caught[0].filename == __file__                    # the line that built the config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(lr=0.5, weight_decay=1.999)                   # 0.9995: shrinks, however hard
        TrainConfig()


@pytest.mark.parametrize("bad, message", [
    (dict(data=torch.randint(0, 5, (16, 2))), "data must be a float tensor"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), r"labels must have shape \(16,\)"),
    (dict(model=VelocityMLP(2, hidden=8, depth=1, num_classes=2)), "class-conditional: pass labels="),
    (dict(info={"when": object()}), "info must hold JSON values"),
    (dict(resume="no"), "resume must be True or False"),
    (dict(extra_weights={"mean.safetensors": {"mean": [0.0, 0.0]}}), r"extra_weights\['mean.safetensors'\]"),
    (dict(config={"steps": 2}), "config must be a TrainConfig, got dict"),
    # a StopIteration from next(model.parameters()), raised with the folder made and locked
    (dict(model=torch.nn.Identity()), r"model has no parameters to train \(Identity\)"),
    (dict(model=lambda x, t: -x), "model must be a torch.nn.Module"),
    # these failed at step 1, inside a folder already holding config.json
    (dict(model=VelocityMLP(2, hidden=8, depth=1, num_classes=2), labels=torch.full((16,), 5)),
     r"labels must be classes in \[0, 1\] \(the model's num_classes = 2; 2 is its null class\), got labels in \[5, 5\]"),
    (dict(model=VelocityMLP(2, hidden=8, depth=1, num_classes=2), labels=torch.full((16,), -1)),
     r"got labels in \[-1, -1\]"),
])
def test_a_refused_call_leaves_no_lock_and_no_folder_behind(tmp_path, bad, message):
    # the arguments were checked after the folder was made and locked: a refused call left a
    # folder holding .lock (a lock file is never deleted), which reads as a run that died
    good = dict(model=VelocityMLP(2, hidden=8, depth=1), data=torch.randn(16, 2),
                config=TrainConfig(steps=2, batch_size=4))

    def refused(out):
        kwargs = {**good, **bad, "out": out}
        with pytest.raises((ValueError, TypeError), match=message):
            train(kwargs.pop("model"), kwargs.pop("data"), kwargs.pop("config"), **kwargs)

    refused(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()                               # a folder made beforehand stays empty
    refused(tmp_path / "kept")
    assert list((tmp_path / "kept").iterdir()) == []
    done = train(good["model"], good["data"], good["config"], out=tmp_path / "run")  # a valid call goes through
    assert (done.out / "final.safetensors").is_file()


def _energy_distance(a, b):
    a, b = a.double(), b.double()
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


def test_2d_mixture_model_matches_mode_weights_and_distribution():
    gmm, ds = _mixture_data()
    config = TrainConfig(steps=400, batch_size=256, lr=5e-3, ema_decay=0.99, seed=0, checkpoints="none")
    torch.manual_seed(0)
    result = train(VelocityMLP(2, hidden=64, depth=2), ds.points, config)
    with torch.no_grad():
        out = kfm.sample(result.ema, seeds=range(3000), shape=(2,), steps=50)
    weights = torch.bincount(gmm.assign(out.x), minlength=3).double() / 3000
    assert (weights - gmm.weights).abs().max() <= 0.05
    reference = gmm.sample(3000, seed=99).points
    bound = 0.02
    # the bound is discriminative: equal mode weights, or modes 60% too wide, exceed it
    wrong_weights = GaussianMixture(gmm.means, torch.ones(3), 0.5).sample(3000, seed=1).points
    too_wide = GaussianMixture(gmm.means, gmm.weights, 0.8).sample(3000, seed=1).points
    assert _energy_distance(wrong_weights, reference) > bound and _energy_distance(too_wide, reference) > bound
    assert _energy_distance(out.x, reference) < bound


@pytest.mark.slow
def test_digits_model_samples_are_confidently_classified():
    from kinetic_fm.models import train_classifier

    digits = load_digits()
    torch.manual_seed(0)
    config = TrainConfig(steps=2000, batch_size=128, lr=2e-3, warmup=50, ema_decay=0.995, checkpoints="none")
    result = train(VelocityMLP((1, 8, 8), hidden=256, depth=3), digits.images, config)  # ~75 s on a busy 2-core box
    classifier = train_classifier(digits.images, digits.labels, steps=1000).model
    with torch.no_grad():
        samples = kfm.sample(result.ema, seeds=range(500), shape=(1, 8, 8), steps=50).x.clamp(-1, 1)
        probs = classifier(samples).softmax(1)
    assert probs.max(1).values.mean() >= 0.8  # measured 0.94 (real digits: 0.999)
    counts = torch.bincount(probs.argmax(1), minlength=10)
    assert (counts >= 15).all(), f"some digit classes are (nearly) never generated: {counts.tolist()}"


@pytest.mark.parametrize("setting,match", [
    ({"steps": 2.5}, "steps must be a positive integer, got 2.5"),
    ({"batch_size": True}, "batch_size must be a positive integer, got True"),
    ({"warmup": -1}, "warmup must be a non-negative integer, got -1"),
    ({"seed": 1.5}, r"seed must be an integer in \[0, 2\*\*32 - 1\] \(torch's generator .*\), got 1.5"),
])
def test_train_config_refuses_counts_that_are_not_integers(setting, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**setting)


def test_train_config_holds_plain_ints_that_config_json_can_write():
    import dataclasses
    import json

    import numpy as np

    config = TrainConfig(steps=np.int64(3), batch_size=torch.tensor(4), seed=np.int32(2))
    assert (config.steps, config.batch_size, config.seed) == (3, 4, 2)
    assert all(type(v) is int for v in (config.steps, config.batch_size, config.seed))
    json.dumps(dataclasses.asdict(config))
    # and plain floats: np.float32 settings passed the checks and stopped config.json being written
    floats = TrainConfig(steps=3, lr=np.float32(1e-3), ema_decay=np.float32(0.5), grad_clip=np.float64(2.0),
                         label_dropout=np.float32(0.25), weight_decay=np.float32(0), betas=np.array([0.5, 0.75]),
                         checkpoints=np.array([1, 3]))
    assert all(type(getattr(floats, name)) is float
               for name in ("lr", "ema_decay", "grad_clip", "label_dropout", "weight_decay"))
    assert floats.betas == (0.5, 0.75) and floats.checkpoints == (1, 3) and type(floats.checkpoints[0]) is int
    json.dumps(dataclasses.asdict(floats))


@pytest.mark.parametrize("setting,match", [
    # refused when the config is built, not after the run folder holds config.json
    ({"steps": 4, "checkpoints": (8,)}, r"checkpoints\[0\] must be an integer in \[1, 4\] \(steps of this training\)"),
    ({"checkpoints": [2.7]}, r"checkpoints\[0\] must be an integer"),       # was truncated to 2
    ({"betas": (1.5, 0.9)}, r"betas\[0\] must be in \[0, 1\), got 1.5"),
    ({"betas": 0.9}, r"betas must be two numbers in \[0, 1\)"),
    ({"label_dropout": -0.1}, r"label_dropout must be in \[0, 1\), got -0.1"),
    ({"ema_decay": "0.9"}, r"ema_decay must be in \[0, 1\), got '0.9'"),
])
def test_train_config_refuses_settings_that_failed_inside_the_run(setting, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**setting)


def test_a_tuple_in_info_resumes(tmp_path, stop_at):
    # config.json reads a tuple back as a list: the resume compared [8, 8] with (8, 8) and refused,
    # printing two equal values as the difference
    make = lambda: VelocityMLP(2, hidden=8, depth=1)                 # noqa: E731
    data, config = torch.randn(32, 2), TrainConfig(steps=6, batch_size=4, save_every=2, checkpoints="none")
    torch.manual_seed(0)
    straight = train(make(), data, config, info={"size": (8, 8)})
    torch.manual_seed(0)
    with pytest.raises(stop_at.error):
        train(make(), data, config, out=tmp_path, info={"size": (8, 8)}, callback=stop_at(3))
    torch.manual_seed(0)
    resumed = train(make(), data, config, out=tmp_path, info={"size": (8, 8)}, resume=True)
    assert resumed.resumed_from == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.state_dict().values(), straight.ema.state_dict().values()))


def test_float64_data_trains_a_float32_net_in_its_precision():
    # the float64 batch met the float32 net's GEMM at step 1 ("mat1 and mat2 must have the same dtype")
    data = torch.randn(32, 2, dtype=torch.float64)
    config = TrainConfig(steps=3, batch_size=4)
    torch.manual_seed(0)
    from_double = train(VelocityMLP(2, hidden=8, depth=1), data, config)
    torch.manual_seed(0)
    from_single = train(VelocityMLP(2, hidden=8, depth=1), data.float(), config)
    assert torch.equal(from_double.losses, from_single.losses)


def _small_run():
    return VelocityMLP(2, hidden=8, depth=1), torch.randn(32, 2), TrainConfig(steps=4, batch_size=4, save_every=2)


def test_a_resume_removes_the_temporaries_of_writers_killed_mid_save(tmp_path):
    # a SIGKILL during a save leaves the atomic writer's hidden temporary behind (11 MB for
    # resume.pt of the digits MLP); nothing removed them, so every kill added one for good
    model, data, config = _small_run()
    train(model, data, config, out=tmp_path / "run")
    stale = [tmp_path / "run" / ".resume.pt.tmp-4242-0123abcd",
             tmp_path / "run" / ".config.json.tmp-4242-89abcdef",
             tmp_path / "run" / "checkpoints" / ".step_0000002.safetensors.tmp-4243-deadbeef"]
    for path in stale:
        path.write_bytes(b"half a file")
    (tmp_path / "run" / "notes.txt").write_text("mine")       # not a temporary: stays
    model, data, config = _small_run()
    train(model, data, config, out=tmp_path / "run", resume=True)
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_config_json_is_written_atomically(tmp_path, monkeypatch):
    # a writer killed while writing config.json left it truncated (a plain write_text): simulate
    # the kill half-way through the write; the earlier config.json must survive whole
    import pathlib

    model, data, config = _small_run()
    train(model, data, config, out=tmp_path / "run")
    before = (tmp_path / "run" / "config.json").read_text()
    plain_write_text = pathlib.Path.write_text

    def killed_half_way(self, text, *args, **kwargs):
        if "config.json" in self.name:
            plain_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt("killed")
        return plain_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", killed_half_way)
    model, data, config = _small_run()
    with pytest.raises(KeyboardInterrupt):
        train(model, data, config, out=tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "config.json").read_text() == before
    assert [p.name for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name] == []


class _Affine(nn.Module):
    """v(x, t) = W x + t b in float64: few enough weights to follow AdamW by hand."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        return x @ self.weight.T + t[:, None] * self.bias


def _adamw_by_hand(weights, grads, config):
    """The weights after each step of AdamW (bias-corrected moments, decoupled weight decay) fed
    ``grads``, with the learning rate warmed up linearly over ``config.warmup`` steps and each
    gradient whose global norm exceeds ``config.grad_clip`` rescaled to that norm."""
    (b1, b2), eps = config.betas, 1e-8
    weights = [w.clone() for w in weights]
    m = [torch.zeros_like(w) for w in weights]
    v = [torch.zeros_like(w) for w in weights]
    trajectory = []
    for s, g in enumerate(grads, start=1):
        norm = math.sqrt(sum(x.square().sum().item() for x in g))
        if config.grad_clip is not None and norm > config.grad_clip:
            g = [x * (config.grad_clip / norm) for x in g]
        lr = config.lr * min(1.0, s / config.warmup) if config.warmup else config.lr
        for w, mk, vk, gk in zip(weights, m, v, g):
            mk.mul_(b1).add_((1 - b1) * gk)
            vk.mul_(b2).add_((1 - b2) * gk.square())
            w.mul_(1 - lr * config.weight_decay)
            w.sub_(lr * (mk / (1 - b1 ** s)) / ((vk / (1 - b2 ** s)).sqrt() + eps))
        trajectory.append([w.clone() for w in weights])
    return trajectory


def _train_recording(config, data):
    """Train an :class:`_Affine` net; returns its initial weights, the raw gradient of every step
    (before clipping), the weights after every step and the TrainResult."""
    net = _Affine()
    initial = [p.detach().clone() for p in net.parameters()]
    grads, after = [[] for _ in initial], []
    for k, p in enumerate(net.parameters()):
        p.register_hook(lambda g, k=k: grads[k].append(g.clone()))
    result = train(net, data, config,
                   callback=lambda step, loss: after.append([p.detach().clone() for p in net.parameters()]))
    return initial, [list(g) for g in zip(*grads)], after, result


@pytest.mark.parametrize("warmup, grad_clip", [(0, None), (3, None), (0, 8.0), (3, 8.0)])
def test_each_step_is_the_adamw_step_of_the_clipped_gradient_at_the_warmed_up_rate(warmup, grad_clip):
    data = 3 * torch.randn(64, 2, dtype=torch.float64)
    config = TrainConfig(steps=8, batch_size=16, lr=0.05, betas=(0.8, 0.95), weight_decay=0.3, warmup=warmup,
                         grad_clip=grad_clip, ema_decay=0.5, checkpoints="none")
    initial, grads, after, _ = _train_recording(config, data)
    norms = [math.sqrt(sum(x.square().sum().item() for x in g)) for g in grads]
    # AdamW is blind to one rescaling of every gradient: a bound of 8 cuts some and spares others
    assert min(norms) < 8.0 < max(norms)
    expected = _adamw_by_hand(initial, grads, config)
    assert len(after) == len(expected) == config.steps
    for s, (got, want) in enumerate(zip(after, expected), start=1):
        for g, w in zip(got, want):  # clip_grad_norm_ divides by the norm + 1e-6: ~1e-9 apart
            torch.testing.assert_close(g, w, rtol=0, atol=1e-7, msg=f"step {s}")


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.99])
def test_the_ema_averages_the_raw_weights_with_the_ramped_up_decay(decay):
    # 0.3 is passed by the ramp (1 + s)/(10 + s) at step 3: both regimes of the min are met
    config = TrainConfig(steps=6, batch_size=8, lr=0.05, ema_decay=decay, checkpoints="none")
    initial, _, after, result = _train_recording(config, 3 * torch.randn(32, 2, dtype=torch.float64))
    ema = [w.clone() for w in initial]
    for s, weights in enumerate(after, start=1):
        d = min(decay, (1 + s) / (10 + s))
        ema = [d * e + (1 - d) * w for e, w in zip(ema, weights)]
    for got, want in zip(result.ema.parameters(), ema):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


class _Normalised(nn.Module):
    """v(x, t) = W batchnorm(x): a net whose running statistics are buffers, not parameters."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(2, dtype=torch.float64)
        self.linear = nn.Linear(2, 2, dtype=torch.float64)

    def forward(self, x, t):
        return self.linear(self.norm(x))


def test_the_ema_copies_buffers_from_the_raw_net():
    result = train(_Normalised(), 3 + torch.randn(32, 2, dtype=torch.float64), TrainConfig(steps=3, batch_size=8))
    running = result.model.norm.running_mean
    assert running.abs().min() > 0.1  # the statistics moved from their initial zeros
    assert torch.equal(result.ema.norm.running_mean, running)
    assert result.ema.norm.num_batches_tracked == 3


class _Spy(nn.Module):
    """v = w x (w a float64 scalar) that records what training feeds it and in which mode; with
    ``null_class`` it is class-conditional, and ``draws`` makes it use the global RNG as dropout does."""

    def __init__(self, null_class=None, draws=False):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.null_class, self.draws = null_class, draws
        self.seen, self.modes = [], []

    def forward(self, x, t, y=None):
        self.seen.append((x.detach().clone(), t.clone(), None if y is None else y.clone()))
        self.modes.append(self.training)
        if self.draws:
            torch.rand(3)
        return self.w * x


def test_the_loss_is_the_flow_matching_loss_on_the_straight_path_from_noise():
    x1 = torch.tensor([[3.0, -2.0]], dtype=torch.float64)  # one sample: each x_t gives back its noise
    net = _Spy()
    result = train(net, x1, TrainConfig(steps=1, batch_size=4096, seed=3))
    (xt, t, _), = net.seen
    assert 0 <= t.min() and t.max() < 1
    assert abs(t.mean() - 0.5) < 5 * math.sqrt(1 / 12 / 4096) and t.min() < 0.01 and t.max() > 0.99
    x0 = (xt - t[:, None] * x1) / (1 - t[:, None])
    assert abs(x0.mean()) < 5 / math.sqrt(x0.numel()) and abs(x0.std() - 1) < 5 / math.sqrt(2 * x0.numel())
    loss = (0.5 * xt - (x1 - x0)).square().mean()
    assert result.losses.shape == (1,)
    torch.testing.assert_close(result.losses[0].double(), loss, rtol=1e-6, atol=0)


def _labelled(k=4):
    """Samples k·[1000, 0] labelled k: x_t/t tells the sample (and so its label) back."""
    return 1000 * torch.arange(k, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 0.0]]), torch.arange(k)


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_label_dropout_gives_the_null_class_at_the_configured_rate_to_labels_of_the_drawn_samples(rate):
    data, labels = _labelled()
    net = _Spy(null_class=4)
    train(net, data, TrainConfig(steps=4, batch_size=500, label_dropout=rate, seed=1), labels=labels)
    xt, t, y = (torch.cat(parts) for parts in zip(*net.seen))
    dropped = y == 4
    n = len(y)
    # binomial counts, 5 standard deviations: seeded, so this is a fixed draw that passes
    assert abs(dropped.sum().item() - rate * n) <= 5 * math.sqrt(n * rate * (1 - rate))
    kept = ~dropped & (t > 0.05)  # there |(1 - t) x0| / (1000 t) < 1/2 for |x0| < 25
    drawn = torch.round(xt[kept, 0] / (1000 * t[kept])).long()
    assert torch.equal(y[kept], drawn)
    counts = torch.bincount(y[~dropped], minlength=4)
    m = (~dropped).sum().item()
    assert ((counts - m / 4).abs() <= 5 * math.sqrt(m * 3 / 16)).all(), counts.tolist()


def test_which_labels_are_dropped_depends_on_the_seed_not_on_the_nets_own_draws():
    data, labels = _labelled()
    quiet, drawing = _Spy(null_class=4), _Spy(null_class=4, draws=True)
    for net in (quiet, drawing):
        train(net, data, TrainConfig(steps=3, batch_size=64, label_dropout=0.5, seed=2), labels=labels)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(quiet.seen, drawing.seen))


def test_the_net_trains_in_train_mode_and_comes_back_in_eval_mode_with_its_ema():
    net = _Spy()
    result = train(net, torch.randn(8, 2, dtype=torch.float64), TrainConfig(steps=3, batch_size=4))
    assert net.modes == [True] * 3
    assert not result.model.training and not result.ema.training


def test_resume_states_follow_save_every_and_the_end_and_checkpoints_their_schedule(tmp_path):
    seen = []

    def look(step, loss):
        state = tmp_path / "resume.pt"
        seen.append((load_state(state)["step"] if state.is_file() else None,
                     sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.safetensors"))))

    config = TrainConfig(steps=7, batch_size=4, save_every=3)
    result = train(VelocityMLP(2, hidden=8, depth=1), torch.randn(32, 2), config, out=tmp_path, callback=look)
    assert [state for state, _ in seen] == [None, None, 3, 3, 3, 6, 7]
    names = [[f"step_{s:07d}.safetensors" for s in steps] for steps in ([1], [1, 2], [1, 2], [1, 2, 4], [1, 2, 4],
                                                                       [1, 2, 4], [1, 2, 4, 7])]
    assert [files for _, files in seen] == names
    assert sorted(result.checkpoints) == [1, 2, 4, 7]
    assert all(read_metadata(path)["step"] == step for step, path in result.checkpoints.items())
    assert read_metadata(tmp_path / "final.safetensors")["step"] == 7
    for path in (result.checkpoints[7], tmp_path / "final.safetensors"):
        saved = load_weights(path)
        for prefix, net in (("model.", result.model), ("ema.", result.ema)):
            assert all(torch.equal(saved[prefix + k], v) for k, v in net.state_dict().items())


def test_an_extended_run_reports_every_checkpoint_its_folder_holds(tmp_path):
    # log2's "last" of the first 12 steps stays in the folder: it is a checkpoint of this run
    data = torch.randn(32, 2)
    train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=12, batch_size=4, save_every=4), out=tmp_path)
    more = train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=20, batch_size=4, save_every=4),
                 out=tmp_path, resume=True)
    on_disk = sorted((tmp_path / "checkpoints").glob("step_*.safetensors"))
    assert sorted(more.checkpoints) == [1, 2, 4, 8, 12, 16, 20]
    assert [more.checkpoints[s] for s in sorted(more.checkpoints)] == on_disk


def test_a_run_resumed_at_its_last_step_writes_its_last_checkpoint(tmp_path, stop_at):
    # killed at step 17 of 20 with the resume state at 15, then finished with steps=15: no step
    # was left to run, so the log2 schedule's last checkpoint (15) was never written
    data = torch.randn(32, 2)
    with pytest.raises(stop_at.error):
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=20, batch_size=4, save_every=5),
              out=tmp_path, callback=stop_at(17))
    done = train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=15, batch_size=4, save_every=5),
                 out=tmp_path, resume=True)
    assert done.resumed_from == 15 and sorted(done.checkpoints) == [1, 2, 4, 8, 15]
    assert read_metadata(done.checkpoints[15])["step"] == 15
    last, final = load_weights(done.checkpoints[15]), load_weights(tmp_path / "final.safetensors")
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in last)


def test_a_run_that_failed_before_saving_a_step_can_be_started_again_without_resume(tmp_path):
    # a net that cannot take the data's shape fails at step 1, after config.json is written; the
    # folder then holds no weights and no step, so a corrected call starts there, as resume would
    data = torch.randn(32, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        train(VelocityMLP(3, hidden=8, depth=1), data, TrainConfig(steps=2, batch_size=4), out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["config.json"]
    again = train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=2, batch_size=4), out=tmp_path)
    fresh = train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=2, batch_size=4), out=tmp_path / "fresh")
    assert torch.equal(again.losses, fresh.losses)
    assert json.loads((tmp_path / "config.json").read_text())["data_shape"] == [32, 2]
    with pytest.raises(ValueError, match=r"already holds a training run \(config.json, resume.pt, final"):
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=2, batch_size=4), out=tmp_path)
    # another program's config.json (a Hugging Face model folder) is not ours to overwrite (helper-103)
    foreign = tmp_path / "hf"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"architectures": ["CLIPModel"]}')
    with pytest.raises(ValueError, match=r"hf holds a config.json that is not a training run's \(another program's, or "
                       r"damaged beyond recognition\); training would write its own over it: move it away, or choose "
                       r"another folder$"):
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=2, batch_size=4), out=foreign)
    assert json.loads((foreign / "config.json").read_text()) == {"architectures": ["CLIPModel"]}


def test_a_resume_may_change_what_it_saves_but_not_what_it_computes(tmp_path, stop_at):
    # save_every and the checkpoint schedule draw nothing and step nothing (see the test above):
    # a resume with other values was refused as another run (helper-91)
    data = torch.randn(32, 2)
    config = TrainConfig(steps=12, batch_size=4, lr=1e-2, seed=2, save_every=3, checkpoints="log2")
    torch.manual_seed(0)
    full = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "full")
    torch.manual_seed(0)
    with pytest.raises(stop_at.error):
        train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut", callback=stop_at(7))
    other = TrainConfig(steps=12, batch_size=4, lr=1e-2, seed=2, save_every=5, checkpoints="none")
    resumed = train(VelocityMLP(2, hidden=8, depth=1), data, other, out=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 6 and torch.equal(full.losses, resumed.losses)
    assert all(torch.equal(a, b) for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()))
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["save_every"] == 5
    with pytest.raises(ValueError, match=r"train.lr"):                      # what it computes is compared
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=12, batch_size=4, lr=2e-2, seed=2),
              out=tmp_path / "cut", resume=True)


# --- found by a user audit of training (helper-108) ----------------------------------------------


def _moons(n=64):
    return kfm.data.two_moons(n, seed=0).points


def test_a_net_that_cannot_be_saved_is_refused_before_the_run_folder():
    # trained to the end, then "MyNet has no kind/config" at the first save: the EMA was lost
    class MyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, t):
            return self.lin(torch.cat([x, t[:, None]], 1))

    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp()) / "run"
    with pytest.raises(ValueError, match="out= saves kinetic_fm.models nets .* MyNet does not"):
        train(MyNet(), _moons(), TrainConfig(steps=3, batch_size=4), out=out)
    assert not out.exists()
    assert train(MyNet(), _moons(), TrainConfig(steps=3, batch_size=4)).losses.shape == (3,)   # in memory: fine


def test_an_interrupted_extension_leaves_no_stale_final_weights(tmp_path):
    # finished at 12, extended to 40 and stopped at 20: load_model(out) read final.safetensors of
    # step 12 while config.json already said 40
    from kinetic_fm.models.checkpoint import resolve_weights

    config = TrainConfig(steps=12, batch_size=8, save_every=4)
    train(VelocityMLP(2, hidden=8, depth=1), _moons(), config, out=tmp_path)
    assert read_metadata(resolve_weights(tmp_path))["step"] == 12

    def stop(step, loss):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(VelocityMLP(2, hidden=8, depth=1), _moons(), TrainConfig(steps=40, batch_size=8, save_every=4),
              out=tmp_path, resume=True, callback=stop)
    assert not (tmp_path / "final.safetensors").exists()
    assert read_metadata(resolve_weights(tmp_path))["step"] == 16      # the latest checkpoint of the run
    # without checkpoints the old end stays loadable, as the checkpoint of its step
    other = tmp_path / "none"
    train(VelocityMLP(2, hidden=8, depth=1), _moons(), TrainConfig(steps=12, batch_size=8, checkpoints="none"),
          out=other)
    before = load_weights(other / "final.safetensors")
    with pytest.raises(KeyboardInterrupt):
        train(VelocityMLP(2, hidden=8, depth=1), _moons(), TrainConfig(steps=40, batch_size=8, checkpoints="none"),
              out=other, resume=True, callback=stop)
    assert resolve_weights(other).name == "step_0000012.safetensors"
    assert all(torch.equal(before[k], v) for k, v in load_weights(resolve_weights(other)).items())


def test_the_latest_checkpoint_is_found_by_its_step_number_not_its_name(tmp_path):
    from kinetic_fm.models import save_model
    from kinetic_fm.models.checkpoint import resolve_weights

    net = VelocityMLP(2, hidden=4, depth=1)
    (tmp_path / "checkpoints").mkdir()
    for step in (9_999_999, 10_000_000):                 # "step_10000000" < "step_9999999" as text
        save_model(net, tmp_path / "checkpoints" / f"step_{step:07d}.safetensors", step=step)
    assert resolve_weights(tmp_path).name == "step_10000000.safetensors"
    # a folder named like a later checkpoint is not one (it was chosen, then "weights not found")
    (tmp_path / "checkpoints" / "step_20000000.safetensors").mkdir()
    assert resolve_weights(tmp_path).name == "step_10000000.safetensors"
    with pytest.raises(IsADirectoryError, match="step_20000000.safetensors: a folder, not a safetensors weights file"):
        load_weights(tmp_path / "checkpoints" / "step_20000000.safetensors")


def test_a_float64_net_loads_back_in_float64_bit_for_bit(tmp_path):
    net = VelocityMLP(2, hidden=8, depth=1).double()
    result = train(net, _moons().double(), TrainConfig(steps=3, batch_size=8), out=tmp_path)
    loaded = load_model(tmp_path)                         # was float32: rounded, and refused float64 x
    assert next(loaded.parameters()).dtype == torch.float64
    for mine, theirs in zip(result.ema.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("change, message", [
    (dict(data_nan=True), r"data must be finite; 1 row\(s\) hold NaN or inf, the first row 5"),
    (dict(labels=[0, 1] * 32), "labels= needs a class-conditional model"),
    (dict(conditional=True, labels=[0.0, 0.5] * 32), "labels must be whole class numbers"),
])
def test_training_input_that_used_to_pass_silently_is_refused(change, message):
    data = _moons().clone()
    if change.get("data_nan"):
        data[5, 1] = math.nan                            # every loss NaN from step 1, no error
    net = VelocityMLP(2, hidden=8, depth=1, num_classes=2 if change.get("conditional") else None)
    labels = change.get("labels")
    with pytest.raises(ValueError, match=message):
        train(net, data, TrainConfig(steps=2, batch_size=4), labels=None if labels is None else torch.tensor(labels))


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 2**64])
def test_the_training_seed_has_the_clis_range(seed):
    # 2**64 failed inside the run folder's lock ("Overflow when unpacking long long"); from 2**32
    # torch's generator repeats seed - 2**32's weights, data order and noise
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32 - 1\] \(torch's generator"):
        TrainConfig(seed=seed)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_a_diverging_run_stops_with_an_error_and_keeps_its_last_finite_resume_state(tmp_path):
    # lr 1e9: every loss from step 2 NaN, NaN weights in every later checkpoint, final and
    # resume.pt (the last good resume state overwritten), and the command exited 0
    config = TrainConfig(steps=20, batch_size=16, lr=1e9, save_every=1)
    with pytest.raises(ValueError, match=r"training diverged at step \d+: .* keeps the resume state of step \d+"):
        train(VelocityMLP(2, hidden=32, depth=2), _moons(256), config, out=tmp_path)
    state = load_state(tmp_path / "resume.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "final.safetensors").exists()
    for path in (tmp_path / "checkpoints").glob("*.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_weights(path).values())


def test_log2_checkpoints_never_pass_the_last_step():
    import numpy as np

    for total in (2**49 - 1, 2**53 - 1, 3, 1):
        steps = checkpoint_steps(total)
        assert max(steps) == total and all(s <= total for s in steps)
    # a NumPy or 0-d tensor count is an integer too (int.bit_length raised AttributeError on them)
    assert checkpoint_steps(np.int64(10)) == checkpoint_steps(torch.tensor(10)) == [1, 2, 4, 8, 10]


def _tiny_runs():
    from kinetic_fm.models import train_classifier

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1

    torch.manual_seed(1)
    built = VelocityMLP(2, hidden=16, depth=1)  # float32, built once under torch's default dtype

    def velocity_net():
        net = copy.deepcopy(built)
        return train(net, data, TrainConfig(steps=4, batch_size=8, seed=0)).losses

    def judge():
        return train_classifier(images, torch.arange(16) % 3, steps=3, batch_size=4, width=4).model.state_dict()

    return {"train": velocity_net, "train_classifier": judge}


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


@pytest.mark.parametrize("name", ["train", "train_classifier"])
def test_training_ignores_the_callers_grad_mode_and_default_dtype(name):
    # a notebook's torch.set_grad_enabled(False) made both fail "element 0 of tensors does not
    # require grad"; a float64 default dtype drew other noise from the same seed (helper-148)
    run = _tiny_runs()[name]
    expected = run()
    with torch.no_grad():
        assert _same(run(), expected)
    if name == "train":  # (train_classifier builds its judge in the default dtype)
        before = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            assert _same(run(), expected)
        finally:
            torch.set_default_dtype(before)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=rf"{name}\(\) trains a net.*outside torch.inference_mode"):
        run()


def _seeded_small_run(out, steps: int, **kwargs):
    """_small_run trained `steps` steps into `out` from torch seed 0; kwargs go to train (resume=True)."""
    import dataclasses

    torch.manual_seed(0)
    model, data, config = _small_run()
    return train(model, data, dataclasses.replace(config, steps=steps), out=out, **kwargs)


def test_a_damaged_resume_state_is_refused_saying_how_to_go_on_and_that_way_trains_as_a_fresh_run(tmp_path):
    # resume.pt cut short (a copy, a disk): the refusal said "not a readable torch checkpoint" and
    # no more; moved away, a resume trains from step 0, as a new run into another folder does
    _seeded_small_run(tmp_path / "run", 4)
    state = tmp_path / "run" / "resume.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable torch checkpoint .*move it away and resume to train again"):
        _seeded_small_run(tmp_path / "run", 6, resume=True)
    state.rename(tmp_path / "damaged.pt")
    resumed, fresh = _seeded_small_run(tmp_path / "run", 6, resume=True), _seeded_small_run(tmp_path / "fresh", 6)
    assert resumed.resumed_from == 0
    for name, weights in fresh.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weights), name


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_resume_state_of_pickle_protocol_4_is_refused_as_a_format_with_a_way_out_that_works(tmp_path):
    # the refusal advised re-saving "the weights ... or as safetensors": a resume state holds the optimiser's
    # state and the run's record, which no safetensors file holds, and a resume.pt in safetensors is refused
    from kinetic_fm.models import UnsafeCheckpointError

    _seeded_small_run(tmp_path / "run", 4)
    state = tmp_path / "run" / "resume.pt"
    torch.save(load_state(state), state, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError) as caught:
        _seeded_small_run(tmp_path / "run", 6, resume=True)
    said = str(caught.value)
    assert "pickle of protocol 4" in said and "without pickle_protocol" in said, said
    assert "safetensors" not in said and "damaged" not in said and "re-save the weights" not in said, said
    assert "move it away and resume to train again from step 0" in said, said
    torch.save(torch.load(state, weights_only=False), state)   # the way out it names (a file we trust: ours)
    resumed, fresh = _seeded_small_run(tmp_path / "run", 6, resume=True), _seeded_small_run(tmp_path / "fresh", 6)
    assert resumed.resumed_from == 4 and torch.equal(resumed.losses, fresh.losses)


def test_a_resume_with_the_net_in_another_dtype_is_refused_naming_both(tmp_path, stop_at):
    # a float32 run resumed with a float64 net went on silently: load_state_dict rounded the saved
    # weights and the optimizer's moments into float64, the batches followed, and the run ended
    # neither float32's nor float64's, its final.safetensors float64 beside float32 checkpoints
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=6, batch_size=8, seed=3, save_every=2, checkpoints="none")
    with pytest.raises(stop_at.error):
        train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path, callback=stop_at(3))
    with pytest.raises(ValueError, match=r"cannot resume .*resume.pt: the run's net is torch.float32, "
                                         r"this one torch.float64"):
        train(VelocityMLP(2, hidden=8, depth=1).double(), data, config, out=tmp_path, resume=True)
    assert load_state(tmp_path / "resume.pt")["step"] == 2 and not (tmp_path / "final.safetensors").exists()
    done = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path, resume=True)  # the run's dtype goes on
    assert done.resumed_from == 2 and next(done.model.parameters()).dtype == torch.float32


def test_a_net_trained_on_a_2d_gaussian_learns_its_exact_velocity():
    # the independent reference: the closed-form velocity from N(0, I) to N(m, σ²I) (fields.analytic)
    from kinetic_fm.fields.analytic import GaussianTarget

    mean, std = torch.tensor([2.0, -1.0]), 0.5
    data = mean + std * torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=300, batch_size=256, lr=3e-3, ema_decay=0.99, seed=0, checkpoints="none")
    torch.manual_seed(0)
    ema = train(VelocityMLP(2, hidden=64, depth=2), data, config).ema
    gen = torch.Generator().manual_seed(1)
    t = 0.05 + 0.9 * torch.rand(2000, generator=gen)  # x ~ p_t: where the loss trained the net
    x = (1 - t)[:, None] * torch.randn(2000, 2, generator=gen) + t[:, None] * (mean + std * torch.randn(2000, 2,
                                                                                                         generator=gen))

    def relative_error(v, exact):
        return ((v - exact).square().sum(1).mean() / exact.square().sum(1).mean()).item()

    exact = GaussianTarget(mean, std)(x, t)
    with torch.no_grad():
        learned = relative_error(ema(x, t), exact)
    bound = 0.02  # 0.004 at this seed; discriminative: a Gaussian twice or half as wide is ~0.075 off
    assert relative_error(GaussianTarget(mean, 2 * std)(x, t), exact) > bound
    assert relative_error(GaussianTarget(mean, std / 2)(x, t), exact) > bound
    assert learned < bound


def test_a_keyboard_interrupt_mid_run_resumes_bit_identically(tmp_path):
    # Ctrl-C is a BaseException, not an Exception: the lock must still be let go and resume.pt kept
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=9, batch_size=4, lr=1e-2, seed=5, save_every=3, checkpoints="log2")

    def ctrl_c_after(k):
        def callback(step, loss):
            if step == k:
                raise KeyboardInterrupt
        return callback

    torch.manual_seed(0)
    full = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "full")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut", callback=ctrl_c_after(5))
    assert load_state(tmp_path / "cut" / "resume.pt")["step"] == 3
    resumed = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 3 and torch.equal(full.losses, resumed.losses)
    for a, b in ((full.model, resumed.model), (full.ema, resumed.ema)):
        assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert sorted(resumed.checkpoints) == sorted(full.checkpoints) == [1, 2, 4, 8, 9]


class _SignallingMLP(VelocityMLP):
    """A tiny MLP whose forward sends itself ``signals`` (signal numbers) in the forward of step ``at``, in the
    middle of that step, and notes in ``sent`` how many of them were sent and returned."""

    def __init__(self, at, signals):
        super().__init__(2, hidden=8, depth=1)
        self.at, self.signals, self.calls, self.sent = at, signals, 0, 0

    def forward(self, x, t):
        import signal

        self.calls += 1
        if self.calls == self.at:
            for signum in self.signals:
                signal.raise_signal(signum)  # delivered before it returns: the handler runs here
                self.sent += 1
        return super().forward(x, t)


_INTERRUPTED = dict(steps=9, batch_size=4, lr=1e-2, seed=5, save_every=3, checkpoints="log2")


def test_ctrl_c_mid_step_keeps_that_step_and_resumes_bit_identically(tmp_path):
    # the resume state was written every save_every steps only: Ctrl-C in step 5 kept step 3's, so steps 4
    # and 5 were lost; the step under way now ends, its resume state is written, and then KeyboardInterrupt
    import signal

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(**_INTERRUPTED)
    torch.manual_seed(0)
    full = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "full")
    torch.manual_seed(0)
    net = _SignallingMLP(5, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt) as caught:
        train(net, data, config, out=tmp_path / "cut")
    assert net.sent == 1 and net.calls == 5                       # the step went on after the signal, no further
    assert (caught.value.interrupted_step, caught.value.resume_step) == (5, 5)
    assert load_state(tmp_path / "cut" / "resume.pt")["step"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 5 and torch.equal(full.losses, resumed.losses)
    for a, b in ((full.model, resumed.model), (full.ema, resumed.ema)):
        assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert sorted(resumed.checkpoints) == sorted(full.checkpoints) == [1, 2, 4, 8, 9]


def test_a_resume_state_on_disk_of_no_path_keeps_none():
    # its docstring allowed path=None ("none is kept"), but write() then raised TypeError from os.stat(None)
    from kinetic_fm.models.train import ResumeStateOnDisk

    saved = []
    on_disk = ResumeStateOnDisk(None)
    on_disk.write(4, saved.append)
    assert saved == [] and on_disk.step == 0


def test_a_second_ctrl_c_interrupts_at_once_and_keeps_the_last_resume_state(tmp_path, monkeypatch):
    # an impatient user, or a save that hangs: the second signal does not wait for the step's end
    import signal
    import sys

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    net = _SignallingMLP(5, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt) as caught:
        train(net, data, TrainConfig(**_INTERRUPTED), out=tmp_path / "twice")
    assert net.sent == 1                                            # the second one raised in the forward
    assert (caught.value.interrupted_step, caught.value.resume_step) == (5, 3)
    assert load_state(tmp_path / "twice" / "resume.pt")["step"] == 3
    # the second signal inside the write of step 5's resume state, its bytes on disk under the temporary
    # name: the save stops, resume.pt stays step 3's, whole, and no temporary is left
    checkpoint = sys.modules["kinetic_fm.models.checkpoint"]
    real_write, written = checkpoint.write_torch, []

    def interrupted_write(obj, path):
        real_write(obj, path)
        if isinstance(obj, dict) and obj.get("step") == 5:
            written.append(path.stat().st_size)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(checkpoint, "write_torch", interrupted_write)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(_SignallingMLP(5, [signal.SIGINT]), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "hung")
    assert len(written) == 1 and written[0] > 0                     # the signal came with step 5's bytes written
    assert (caught.value.interrupted_step, caught.value.resume_step) == (5, 3)
    state = load_state(tmp_path / "hung" / "resume.pt")
    assert state["step"] == 3 and state["losses"].shape == (3,)
    assert [p.name for p in (tmp_path / "hung").iterdir() if ".tmp-" in p.name] == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_after_resume_pt_is_replaced_reports_that_step_kept(
        tmp_path, monkeypatch, signal_after_state_replaced):
    # the second signal in the folder's fsync, after os.replace put step 5's state in place: resume_step said 3,
    # so the command reported steps 4 and 5 lost while resume.pt held step 5
    import signal

    signal_after_state_replaced(5)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KeyboardInterrupt) as caught:
        train(_SignallingMLP(5, [signal.SIGINT]), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "late")
    assert load_state(tmp_path / "late" / "resume.pt")["step"] == 5
    assert (caught.value.interrupted_step, caught.value.resume_step) == (5, 5)


class _Stopped(KeyboardInterrupt):
    """A program's own SIGTERM exception (as kfm's): train() knows nothing of it."""


def test_sigterm_with_a_raising_handler_waits_for_the_step_and_the_handlers_are_restored(tmp_path):
    # whatever Python handler is installed for SIGINT and SIGTERM runs at the step's end, after its resume state
    import signal

    def stop(signum, frame):
        raise _Stopped

    def on_int(signum, frame):
        raise KeyboardInterrupt

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    before = signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, on_int)
    try:
        net = _SignallingMLP(4, [signal.SIGTERM])
        with pytest.raises(_Stopped) as caught:
            train(net, data, TrainConfig(**_INTERRUPTED), out=tmp_path / "term")
        assert net.sent == 1 and (caught.value.interrupted_step, caught.value.resume_step) == (4, 4)
        assert load_state(tmp_path / "term" / "resume.pt")["step"] == 4
        assert signal.getsignal(signal.SIGTERM) is stop and signal.getsignal(signal.SIGINT) is on_int
        # after a return, and after an error of the run
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "done")
        assert signal.getsignal(signal.SIGTERM) is stop and signal.getsignal(signal.SIGINT) is on_int

        def fail(step, loss):
            raise ValueError("the callback failed")

        with pytest.raises(ValueError, match="the callback failed"):
            train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "failed",
                  callback=fail)
        assert signal.getsignal(signal.SIGTERM) is stop and signal.getsignal(signal.SIGINT) is on_int
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def test_ctrl_c_without_a_run_folder_interrupts_at_once():
    # nothing to save: the step under way is not finished (as before)
    import signal

    net = _SignallingMLP(5, [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt) as caught:
        train(net, torch.randn(64, 2), TrainConfig(**_INTERRUPTED))
    assert net.sent == 0 and not hasattr(caught.value, "resume_step")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_float16_net_is_refused_before_its_first_step_and_bfloat16_trains(tmp_path):
    # AdamW's second moments underflow in float16 (g² < 6e-8 is 0, and eps = 1e-8 too): the first
    # step divided by zero and the run "diverged at step 2 ... try a smaller learning rate"
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=20, batch_size=16, checkpoints="none")
    with pytest.raises(ValueError, match=r"model is float16: .*AdamW.* train it in float32 or bfloat16"):
        train(VelocityMLP(2, hidden=16, depth=1).half(), data, config, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    torch.manual_seed(0)
    result = train(VelocityMLP(2, hidden=16, depth=1).to(torch.bfloat16), data, config)
    assert torch.isfinite(result.losses).all() and next(result.ema.parameters()).dtype == torch.bfloat16


def test_resume_into_a_folder_holding_another_programs_config_json_is_refused(tmp_path):
    # resume=True (kfm train --resume) skipped the check: with no resume.pt the run started afresh
    # and overwrote the Hugging Face model folder's config.json
    foreign = tmp_path / "hf"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"architectures": ["CLIPModel"]}')
    with pytest.raises(ValueError, match=r"hf holds a config.json that is not a training run's .*choose another folder"):
        train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4), out=foreign,
              resume=True)
    assert json.loads((foreign / "config.json").read_text()) == {"architectures": ["CLIPModel"]}
    assert sorted(p.name for p in foreign.iterdir() if not p.name.startswith(".")) == ["config.json"]


@pytest.mark.parametrize("key", ["step", "ema", "model", "path", "kind", "config", "sample_shape"])
def test_info_keys_that_the_checkpoints_metadata_uses_are_refused_before_the_run_folder(tmp_path, key):
    # "step" and "ema" failed at the first checkpoint with save_model's TypeError, inside the run;
    # "kind" and "config" replaced the net's own metadata, so that load_model could not rebuild it
    with pytest.raises(ValueError, match=rf"info must not use the key {key!r}: .*sample_shape, step; rename it"):
        train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
              out=tmp_path / "run", info={key: 1, "data": "moons"})
    assert not (tmp_path / "run").exists()


def test_data_that_requires_grad_is_trained_on_as_values_and_left_untouched():
    # the loss backpropagated into the caller's data tensor: data.grad filled up, step after step
    data = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=3, batch_size=4, checkpoints="none")
    torch.manual_seed(0)
    plain = train(VelocityMLP(2, hidden=8, depth=1), data, config)
    leaf = data.clone().requires_grad_(True)
    torch.manual_seed(0)
    result = train(VelocityMLP(2, hidden=8, depth=1), leaf, config)
    assert leaf.grad is None and torch.equal(result.losses, plain.losses)


@pytest.mark.parametrize("text, problem", [
    ('{"model": {"kind": "mlp"}, "train": {"st', r"is not valid JSON \(.*\); was it edited or cut short\?"),
    ('{"model": {"kind": "mlp"}, "train": {}}', r"lacks 'data_shape'; was it edited\?"),
    ('{"train": {"steps": 2, "seed": 0}}', r"lacks 'model', 'data_shape'; was it edited\?"),
    ('{"model": {}, "train": {}, "data_shape": "32x2"}',
     r'records a data_shape that is no shape \(.*\), got "32x2"; was it edited\?'),
])
@pytest.mark.parametrize("resume", [False, True])
def test_a_damaged_config_json_alone_is_named_as_damaged_with_a_way_on(tmp_path, text, problem, resume):
    # it was refused as another program's (resume=True), or as a run to continue with resume=True,
    # which then refused it as another program's (helper-269); the message began with the file's path, which
    # kfm train put after "--out" as if it were the flag's value, and said to remove the file (helper-282)
    from kinetic_fm.models.run_config import DamagedTrainConfigError

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(DamagedTrainConfigError, match=rf"^{re.escape(str(tmp_path))} holds a training run's "
                       rf"config.json that {problem} With no resume.pt beside it the folder holds no step to resume "
                       r".*: move it away to train in .* from step 0, or choose another folder$"):
        train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
              out=tmp_path, resume=resume)
    assert (tmp_path / "config.json").read_text() == text
    (tmp_path / "config.json").unlink()  # the way on it gives
    assert train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
                 out=tmp_path, resume=resume).resumed_from == 0


@pytest.mark.parametrize("content", [
    b'{"model": {"name": "bert-base"}, "train": {"lr": 0.001}}', b"[]", b"[1, 2]", b"", b"\xff\xfe",
    '{"model": {"kind": "mlp"}}'.encode("utf-16"), b"not json at all",
])
@pytest.mark.parametrize("resume", [False, True])
def test_a_config_json_train_did_not_write_is_not_called_a_damaged_training_runs(tmp_path, content, resume):
    # another program's JSON holding some of model/train/data_shape, a list, an empty file and a UTF-16 one were
    # each called "the training run's config.json", which "lacks 'data_shape'" or worse, "remove it" (helper-282)
    from kinetic_fm.models.run_config import DamagedTrainConfigError, read_train_config

    (tmp_path / "config.json").write_bytes(content)
    assert read_train_config(tmp_path / "config.json") is None
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))} holds a config.json that is not a training "
                       r"run's \(another program's, or damaged beyond recognition\); .*: move it away, or choose "
                       r"another folder$") as caught:
        train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
              out=tmp_path, resume=resume)
    assert not isinstance(caught.value, DamagedTrainConfigError)
    assert (tmp_path / "config.json").read_bytes() == content


def test_an_unreadable_config_json_is_named_unreadable_not_another_programs(tmp_path, monkeypatch):
    # every OSError read as "not a file": a training run's config.json the user may not read (EACCES, EIO) was
    # called another program's (helper-282); as root chmod denies no read, so the read itself is made to fail
    import pathlib

    from kinetic_fm.models.train import check_train_dir

    (tmp_path / "config.json").write_text('{"model": {"kind": "mlp"}, "train": {"steps": 2, "seed": 0}, '
                                          '"data_shape": [16, 2]}')
    check_train_dir(tmp_path, resume=False)  # readable: a run that saved no step, to train in again
    read_bytes = pathlib.Path.read_bytes

    def denied(self, *args, **kwargs):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    for resume in (False, True):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))} holds a config.json that cannot be read "
                           r"\(Permission denied\); make it readable, or choose another folder$"):
            check_train_dir(tmp_path, resume=resume)
    monkeypatch.undo()
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").mkdir()  # not a file: still another program's, as before
    with pytest.raises(ValueError, match=r"not a training run's"):
        check_train_dir(tmp_path, resume=True)
    # on Windows opening a folder raises PermissionError, not IsADirectoryError: still not a run's, not unreadable
    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    with pytest.raises(ValueError, match=r"not a training run's"):
        check_train_dir(tmp_path, resume=True)


def test_a_damaged_config_json_beside_resume_pt_resumes_from_its_step_and_is_written_again(tmp_path, stop_at):
    # resume.pt records the settings a resume compares: the run goes on from its saved step, not from 0
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=8, batch_size=4, seed=3, save_every=2, checkpoints="none")
    torch.manual_seed(0)
    full = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "full")
    torch.manual_seed(0)
    with pytest.raises(stop_at.error):
        train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut", callback=stop_at(5))
    written = (tmp_path / "cut" / "config.json").read_text()
    (tmp_path / "cut" / "config.json").write_text(written[:40])
    with pytest.raises(ValueError, match=r"already holds a training run \(config.json, resume.pt\)"):
        train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut")
    resumed = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 4 and torch.equal(resumed.losses, full.losses)
    assert (tmp_path / "cut" / "config.json").read_text() == written


@pytest.mark.parametrize("damage", ["in a string", "in a key", "cut short"])
@pytest.mark.parametrize("resume", [False, True])
def test_a_config_json_of_ours_with_a_byte_that_is_not_utf8_is_named_damaged(tmp_path, damage, resume):
    # train writes ASCII (json.dumps escapes the rest): one bad byte in its record read as "another program's, or
    # damaged beyond recognition", though the rest named it as a training run's record
    from kinetic_fm.models.run_config import DamagedTrainConfigError, read_train_config

    train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
          out=tmp_path / "run", info={"data": "moons"})
    (tmp_path / "run" / "resume.pt").unlink()  # a folder with config.json alone: check_train_dir reads it
    (tmp_path / "run" / "final.safetensors").unlink()
    for step in (tmp_path / "run" / "checkpoints").iterdir():
        step.unlink()
    (tmp_path / "run" / "checkpoints").rmdir()
    written = (tmp_path / "run" / "config.json").read_bytes()
    at = {"in a string": written.index(b"moons") + 1, "in a key": written.index(b"data_shape") + 2,
          "cut short": written.index(b"data_shape") + 2}[damage]
    damaged = written[:at] + b"\xff" + written[at + 1:]
    if damage == "cut short":
        damaged = damaged[:at + 10]
    (tmp_path / "run" / "config.json").write_bytes(damaged)
    problem = rf"holds a byte that is not UTF-8 \(0xff at byte {at}; train writes ASCII\); was it edited or damaged\?"
    with pytest.raises(DamagedTrainConfigError, match=rf"config.json: the training run's config.json {problem}$"):
        read_train_config(tmp_path / "run" / "config.json")
    with pytest.raises(DamagedTrainConfigError, match=rf"^{re.escape(str(tmp_path / 'run'))} holds a training run's "
                       rf"config.json that {problem} With no resume.pt beside it"):
        train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
              out=tmp_path / "run", resume=resume)
    assert (tmp_path / "run" / "config.json").read_bytes() == damaged


def test_ctrl_c_while_the_final_weights_are_written_is_held_until_they_are(tmp_path, monkeypatch):
    # the step loop's block had ended: a SIGINT in final.safetensors' write cut it, and the finished run had no
    # final weights; it is held now, the file written whole, and then KeyboardInterrupt with the steps kept
    import os
    import signal
    import sys

    module = sys.modules["kinetic_fm.models.train"]
    real_save = module.save_model
    sent = []

    def interrupted_save(model, path, **kwargs):
        if path.name == "final.safetensors":
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # a real signal: its handler runs before the write begins
        real_save(model, path, **kwargs)

    monkeypatch.setattr(module, "save_model", interrupted_save)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(KeyboardInterrupt) as caught:
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "run")
    assert len(sent) == 1
    assert (caught.value.interrupted_step, caught.value.resume_step) == (9, 9)
    net = load_model(tmp_path / "run" / "final.safetensors")
    ema = load_weights(tmp_path / "run" / "final.safetensors")
    assert isinstance(net, VelocityMLP) and any(name.startswith("ema.") for name in ema)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_a_resume_loads_names_the_step_on_disk(tmp_path, monkeypatch):
    # a KeyboardInterrupt in load_resume_state carried no step: kfm train could only say "the steps up to the
    # last resume state are kept"; the load is held as a step is, and the interruption names the step on disk
    import os
    import signal
    import sys

    module = sys.modules["kinetic_fm.models.train"]
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(**{**_INTERRUPTED, "steps": 6})
    train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "run")
    real_load = module.load_resume_state

    def interrupted_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(module, "load_resume_state", interrupted_load)
    net = _SignallingMLP(10**6, [])  # counts its forwards: no step may run
    with pytest.raises(KeyboardInterrupt) as caught:
        train(net, data, TrainConfig(**_INTERRUPTED), out=tmp_path / "run", resume=True)
    assert net.calls == 0
    assert (caught.value.interrupted_step, caught.value.resume_step) == (6, 6)
    assert load_state(tmp_path / "run" / "resume.pt")["step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # a second Ctrl-C in the load stops it at once: the step on disk is then not known, and none is named
    twice = []

    def interrupted_twice(*args, **kwargs):
        twice.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(module, "load_resume_state", interrupted_twice)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "run", resume=True)
    assert twice == [1] and not hasattr(caught.value, "resume_step")
    monkeypatch.undo()
    resumed = train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(**_INTERRUPTED), out=tmp_path / "run",
                    resume=True)
    assert resumed.resumed_from == 6


def test_an_unconditional_run_records_no_label_dropout_and_resumes_a_folder_that_recorded_one(
        tmp_path, record_label_dropout):
    # config.json said label_dropout 0.1 (TrainConfig's default) for a net that has no labels to drop
    from dataclasses import replace

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=8, batch_size=4, seed=3, save_every=2, checkpoints="none")
    torch.manual_seed(0)
    full = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "full")
    assert json.loads((tmp_path / "full" / "config.json").read_text())["train"]["label_dropout"] == 0.0
    # a run folder the previous version wrote: 0.1 in config.json and in resume.pt's record
    torch.manual_seed(0)
    train(VelocityMLP(2, hidden=8, depth=1), data, replace(config, steps=4), out=tmp_path / "old")
    record_label_dropout(tmp_path / "old", 0.1)
    resumed = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "old", resume=True)
    assert resumed.resumed_from == 4 and torch.equal(resumed.losses, full.losses)
    assert json.loads((tmp_path / "old" / "config.json").read_text())["train"]["label_dropout"] == 0.0
    # a class-conditional run records its rate, and another rate is still refused on resume
    labels = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    conditional = replace(config, label_dropout=0.3)
    train(VelocityMLP(2, hidden=8, depth=1, num_classes=3), data, conditional, labels=labels, out=tmp_path / "cond")
    assert json.loads((tmp_path / "cond" / "config.json").read_text())["train"]["label_dropout"] == 0.3
    with pytest.raises(ValueError, match=r"train.label_dropout: saved 0.3, now 0.1"):
        train(VelocityMLP(2, hidden=8, depth=1, num_classes=3), data, replace(conditional, steps=10, label_dropout=0.1),
              labels=labels, out=tmp_path / "cond", resume=True)


def test_train_refuses_a_folder_of_someone_elses_files_and_leaves_it_as_it_was(tmp_path):
    # train(out=...) wrote its run among the files of a folder that held no run, and left a .lock there
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "album").mkdir()
    for resume in (False, True):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(folder))} is not empty and holds no training run "
                           r"\(it holds album, notes.txt\): training would write its files among them; choose a new "
                           r"or empty folder$"):
            train(VelocityMLP(2, hidden=8, depth=1), torch.randn(16, 2), TrainConfig(steps=2, batch_size=4),
                  out=folder, resume=resume)
    assert sorted(p.name for p in folder.iterdir()) == ["album", "notes.txt"]
    # beside a run's own files the user's stay welcome: a resume of a run they were added to goes on
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=4, batch_size=4, save_every=2),
          out=tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert train(VelocityMLP(2, hidden=8, depth=1), data, TrainConfig(steps=6, batch_size=4, save_every=2),
                 out=tmp_path / "run", resume=True).resumed_from == 4


def test_a_run_killed_in_its_first_checkpoints_write_starts_again_without_resume(tmp_path):
    # config.json alone (no step saved) lets a new run start; the checkpoints/ folder of a run killed while it wrote
    # step 1's checkpoint holds no step either (only the writer's temporary), yet read as "already holds a run"
    data = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=2, batch_size=4, save_every=2)
    train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "run")
    for name in ("resume.pt", "final.safetensors"):
        (tmp_path / "run" / name).unlink()
    for step in (tmp_path / "run" / "checkpoints").iterdir():
        step.unlink()
    (tmp_path / "run" / "checkpoints" / ".step_0000001.safetensors.tmp-4242-0123abcd").write_bytes(b"half")
    done = train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "run")
    assert done.resumed_from == 0 and (tmp_path / "run" / "final.safetensors").is_file()
    # an empty checkpoints/ alone, with the lock file: ours too, neither another run nor someone else's files
    (tmp_path / "bare" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bare" / ".lock").write_text("")
    assert train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "bare").resumed_from == 0
    # a checkpoint written is a step saved: that folder is a run's, continued with resume=True
    with pytest.raises(ValueError, match=r"already holds a training run \(config.json, checkpoints\)"):
        (tmp_path / "run" / "resume.pt").unlink()
        (tmp_path / "run" / "final.safetensors").unlink()
        train(VelocityMLP(2, hidden=8, depth=1), data, config, out=tmp_path / "run")


def test_a_resume_settings_refusal_survives_pickling_with_its_attributes(tmp_path):
    # pickle.loads raised TypeError (its __init__ takes the path, the differences and the data's refusal)
    import pickle
    from pathlib import Path

    from kinetic_fm.models.train import ResumeSettingsError

    err = ResumeSettingsError(Path(tmp_path) / "resume.pt", {"train.lr": (0.001, 0.002)}, "the data differ")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ResumeSettingsError and str(back) == str(err)
    assert (back.path, back.differ, back.data) == (err.path, {"train.lr": (0.001, 0.002)}, "the data differ")
