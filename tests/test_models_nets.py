import copy

import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.models import (SinusoidalTimeEmbedding, UNet, VelocityMLP, default_model,
                               load_into, save_weights)


def test_time_embedding_is_sin_cos_of_scaled_time():
    emb = SinusoidalTimeEmbedding(8, scale=1000.0, max_period=10_000.0)
    t = torch.tensor([0.0, 0.25])
    out = emb(t)
    freqs = torch.tensor([10_000.0 ** (-k / 4) for k in range(4)])
    angle = 1000 * t[:, None] * freqs
    assert torch.allclose(out, torch.cat([angle.sin(), angle.cos()], 1), atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        SinusoidalTimeEmbedding(7)


def test_a_float64_net_embeds_its_time_in_float64():
    # t.float() made a float64 net's embedding 3e-5 off the formula and the net a step function of t
    # (60 times 1e-9 apart around 0.7 gave 2 distinct velocities)
    import math

    emb = SinusoidalTimeEmbedding(16).double()
    t = torch.tensor([0.0, 0.3, 0.7, 0.7 + 1e-9, 1.0], dtype=torch.float64)
    freqs = [math.exp(-math.log(10_000.0) * k / 8) for k in range(8)]
    expected = torch.tensor([[f(1000.0 * s * q) for f in (math.sin, math.cos) for q in freqs] for s in t.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(emb(t), expected, rtol=0, atol=1e-12)
    net = VelocityMLP(2, hidden=16, depth=2, time_dim=16).double()
    x = torch.ones(60, 2, dtype=torch.float64)
    v = net(x, 0.7 + 1e-9 * torch.arange(60, dtype=torch.float64))
    assert len(set(v[:, 0].tolist())) == 60
    # other dtypes embed as before: float32 arithmetic on the float32 frequencies
    t32 = t.float()
    single = SinusoidalTimeEmbedding(16)
    angle = (1000.0 * t32)[:, None] * single.freqs[None, :]
    assert torch.equal(single(t32), torch.cat([angle.sin(), angle.cos()], 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_time_embedding_matches_the_formula_at_the_ends_of_time(dtype):
    # it embedded in float32 and returned float32, which the net's float16 Linear refused, and
    # .half() rounded its frequencies (1000·t·f_k off by up to 0.25 rad at t = 1)
    import math

    emb = SinusoidalTimeEmbedding(16).to(dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    freqs = [math.exp(-math.log(10_000.0) * k / 8) for k in range(8)]
    expected = torch.tensor([[f(1000.0 * s * q) for f in (math.sin, math.cos) for q in freqs] for s in (0.0, 1.0)],
                            dtype=torch.float64)
    out = emb(t)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make, shape", [
    (lambda: VelocityMLP(2, hidden=16, depth=1), (2,)),
    (lambda: UNet(1, base_channels=8, channel_mults=(1, 2)), (1, 8, 8)),
])
def test_a_half_precision_net_runs_and_agrees_with_its_float32_self(make, shape, dtype):
    # a net's forward failed in float16 and bfloat16: "mat1 and mat2 must have the same dtype"
    torch.manual_seed(0)
    net = make().eval()
    low = copy.deepcopy(net).to(dtype)
    net.load_state_dict({k: v.to(dtype).float() for k, v in low.state_dict().items()})  # the same weights
    x = torch.randn(4, *shape).to(dtype)
    t = torch.tensor([0.0, 0.3, 0.77, 1.0])  # read in float32: 0.77 in float16 is 1000·t 0.3 rad off
    seen = []
    low.time_embed[0].register_forward_hook(lambda module, args, out: seen.append((args[0], out.dtype)))
    with torch.no_grad():
        v_low, v = low(x, t), net(x.float(), t)
    assert v_low.dtype == dtype and v_low.shape == x.shape
    (times, features), = seen
    assert times.dtype == torch.float32 and torch.equal(times, t) and features == dtype
    # the low-precision arithmetic of the layers only: a few of its ulps relative to the output's scale
    assert (v_low.float() - v).abs().max() <= 16 * torch.finfo(dtype).eps * v.abs().max()


@pytest.mark.parametrize("make, shape", [
    (lambda: VelocityMLP(2, hidden=32, depth=2), (2,)),
    (lambda: VelocityMLP((1, 8, 8), hidden=32, depth=1), (1, 8, 8)),
    (lambda: UNet(1, base_channels=8, channel_mults=(1, 2)), (1, 8, 8)),
    (lambda: UNet(3, base_channels=8, channel_mults=(1, 2, 2), attention_levels=(1, 2)), (3, 16, 16)),
])
def test_velocity_nets_shape_and_batch_invariance(make, shape):
    model = make().eval()
    x, t = torch.randn(5, *shape), torch.rand(5)
    with torch.no_grad():
        v = model(x, t)
        assert v.shape == x.shape
        # each row depends on its own input only (no batch statistics)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(5)])
        assert torch.allclose(v, single, atol=1e-5)
        assert torch.allclose(model(x, torch.full((5,), 0.3)), model(x, 0.3))
        assert not torch.allclose(model(x, torch.zeros(5)), model(x, torch.ones(5)))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        model(x, torch.rand(4))


def test_unet_size_check_and_class_conditioning():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(1, base_channels=8, channel_mults=(1, 2, 2))(torch.randn(1, 1, 6, 6), torch.rand(1))
    model = UNet(1, base_channels=8, channel_mults=(1, 2), num_classes=10).eval()
    torch.nn.init.normal_(model.class_embed.weight)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    with torch.no_grad():
        assert model.null_class == 10
        assert torch.equal(model(x, t), model(x, t, torch.full((3,), 10)))  # no label = null class
        assert not torch.allclose(model(x, t, torch.tensor([1, 2, 3])), model(x, t, torch.tensor([4, 5, 6])))


def test_cfg_from_fields_works_with_our_nets():
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance

    model = VelocityMLP(2, hidden=16, depth=1, num_classes=3).eval()
    torch.nn.init.normal_(model.class_embed.weight)
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t)
        guided = ClassifierFreeGuidance(model, y, 2.0, null_label=model.null_class)(x, t)
    assert torch.allclose(guided, uncond + 2.0 * (cond - uncond), atol=1e-6)


class _StepNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen = None

    def forward(self, x, k):
        self.seen = k
        return x * self.w + k[:, None].to(x)


def test_load_into_wraps_discrete_nets(tmp_path):
    src = _StepNet()
    with torch.no_grad():
        src.w.fill_(3.0)
    save_weights(src.state_dict(), tmp_path / "w.safetensors")
    v = load_into(_StepNet(), tmp_path / "w.safetensors", num_timesteps=11)
    out = v(torch.ones(2, 2), torch.tensor([0.0, 1.0]))
    assert torch.equal(out, torch.tensor([[3.0, 3.0], [13.0, 13.0]]))
    assert isinstance(v, kfm.DiscreteTime) and v.num_timesteps == 11
    # the reference's int(t·999) truncation, steps handed over as int64
    v = load_into(_StepNet(), tmp_path / "w.safetensors", num_timesteps=1000)
    t = torch.tensor([0.0, 0.5, 0.9999, 1.0, 0.123])
    v(torch.zeros(5, 2), t)
    assert v.inner.seen.tolist() == [int(float(s) * 999) for s in t.tolist()] == [0, 499, 998, 999, 122]
    assert v.inner.seen.dtype == torch.int64


def test_default_model_picks_architecture():
    assert default_model("auto", (2,)).kind == "mlp"
    assert default_model("auto", (1, 8, 8)).kind == "mlp"
    assert default_model("unet", (1, 8, 8), width=12).kind == "unet"  # 12 channels: GroupNorm groups adapt
    assert default_model("auto", (1, 28, 28)).kind == "unet"
    with pytest.raises(ValueError, match="image"):
        default_model("unet", (2,))
    assert default_model("auto", (1, 16, 16)).kind == "mlp"          # "at most 256 values": 256 included
    assert default_model("auto", (1, 17, 16)).kind == "unet"
    # as many levels as H and W halve evenly: 6x6 takes two (6 -> 3), 4x4 three, 5x5 one
    for side, levels in ((6, 2), (4, 3), (5, 1)):
        net = default_model("unet", (1, side, side), width=8)
        assert len(net.config["channel_mults"]) == levels
        assert net(torch.zeros(2, 1, side, side), torch.rand(2)).shape == (2, 1, side, side)


def _conv(cin, cout, k):
    return k * k * cin * cout + cout


def _unet_res(cin, cout, cond):
    # GroupNorm-conv, conditioning projection, GroupNorm-conv, and a 1x1 skip on width change
    skip = _conv(cin, cout, 1) if cin != cout else 0
    return 2 * cin + _conv(cin, cout, 3) + cond * cout + cout + 2 * cout + _conv(cout, cout, 3) + skip


def _unet_attn(ch):
    return 2 * ch + _conv(ch, 3 * ch, 1) + _conv(ch, ch, 1)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_unet_parameter_count_follows_the_documented_architecture():
    # two levels (8, 16 channels), one block per level, attention by default at the lowest level only
    b, cond = 8, 32
    expected = (b * cond + cond + cond * cond + cond                                   # time MLP
                + _conv(1, 8, 3)                                                     # stem
                + _unet_res(8, 8, cond) + _conv(8, 8, 3)                             # level 0, downsample
                + _unet_res(8, 16, cond) + _unet_attn(16)                            # level 1
                + _unet_res(16, 16, cond) + _unet_attn(16) + _unet_res(16, 16, cond)  # middle
                + _unet_res(16 + 16, 16, cond) + _unet_attn(16) + _unet_res(16 + 8, 16, cond) + _unet_attn(16)
                + _conv(16, 16, 3)                                                   # decoder level 1, upsample
                + _unet_res(16 + 8, 8, cond) + _unet_res(8 + 8, 8, cond)              # decoder level 0
                + 2 * 8 + _conv(8, 1, 3))                                            # output
    assert _count(UNet(1, base_channels=8, channel_mults=(1, 2))) == expected

    # widths 4 and 12, two blocks per level (three in the decoder), attention at full resolution, 5 classes + null
    cond = 16
    expected = (4 * cond + cond + cond * cond + cond + 6 * cond + _conv(3, 4, 3)
                + 2 * (_unet_res(4, 4, cond) + _unet_attn(4)) + _conv(4, 4, 3)
                + _unet_res(4, 12, cond) + _unet_res(12, 12, cond)
                + _unet_res(12, 12, cond) + _unet_attn(12) + _unet_res(12, 12, cond)
                + 2 * _unet_res(12 + 12, 12, cond) + _unet_res(12 + 4, 12, cond) + _conv(12, 12, 3)
                + _unet_res(12 + 4, 4, cond) + 2 * _unet_res(4 + 4, 4, cond) + 3 * _unet_attn(4)
                + 2 * 4 + _conv(4, 3, 3))
    net = UNet(3, base_channels=4, channel_mults=(1, 3), num_res_blocks=2, attention_levels=(0,), num_classes=5)
    assert _count(net) == expected


def test_mlp_parameter_count_follows_the_documented_architecture():
    dim, h, time_dim, depth, classes = 16, 16, 8, 3, 2
    block = 2 * h + 3 * (h * h + h)  # LayerNorm, conditioning, two linears
    expected = (time_dim * h + h + h * h + h + (classes + 1) * h + dim * h + h
                + depth * block + 2 * h + h * dim + dim)
    assert _count(VelocityMLP((1, 4, 4), hidden=h, depth=depth, time_dim=time_dim, num_classes=classes)) == expected


@pytest.mark.parametrize("make, shape", [
    (lambda: UNet(1, base_channels=4, channel_mults=(1, 2), attention_levels=(0, 1), num_classes=3), (1, 4, 4)),
    (lambda: VelocityMLP((1, 2, 2), hidden=8, depth=3, time_dim=4, num_classes=3), (1, 2, 2)),
])
def test_every_parameter_shapes_the_output(make, shape):
    # a layer built but skipped in forward (a dropped norm, attention or block) gets no gradient
    torch.manual_seed(0)
    model = make().double()
    x, t, y = torch.randn(3, *shape, dtype=torch.float64), torch.rand(3, dtype=torch.float64), torch.tensor([0, 1, 2])
    model(x, t, y).square().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_unet_residual_branches_are_added_to_their_input():
    from kinetic_fm.models.unet import ResBlock, SelfAttention

    x, c = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    block, attn = ResBlock(8, 8, 16, 4, 0.0), SelfAttention(8, 4)
    with torch.no_grad():
        assert not torch.allclose(block(x, c), x) and not torch.allclose(attn(x), x)
        for layer in (block.conv2, attn.proj):
            layer.weight.zero_()
            layer.bias.zero_()
        assert torch.equal(block(x, c), x) and torch.equal(attn(x), x)


def test_mlp_blocks_are_residual():
    model = VelocityMLP(2, hidden=8, depth=2, time_dim=4).eval()
    x = torch.randn(4, 2)
    with torch.no_grad():
        for block in model.blocks:
            block.fc2.weight.zero_()
            block.fc2.bias.zero_()
        # time enters only through the blocks' residual branches, now zero; x still passes through
        assert torch.equal(model(x, torch.zeros(4)), model(x, torch.ones(4)))
        assert not torch.allclose(model(x, 0.5), model(x + 1.0, 0.5))


def test_unet_decoder_reads_each_encoder_activation_as_its_skip():
    model = UNet(1, base_channels=4, channel_mults=(1, 2), num_res_blocks=1).eval()
    encoder, decoder_inputs = [], []
    for module in [model.stem, *model.down_attn, *model.downsample]:
        module.register_forward_hook(lambda m, args, out: encoder.append(out))
    for block in model.up_blocks:
        block.register_forward_pre_hook(lambda m, args: decoder_inputs.append(args[0]))
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8), torch.rand(2))
    assert len(decoder_inputs) == len(encoder) == 4
    # encoder activations in forward order (stem, level-0 block, downsample, level-1 block),
    # read back by the decoder last-in first-out
    for inp, skip in zip(decoder_inputs, reversed(encoder)):
        assert torch.equal(inp[:, -skip.shape[1]:], skip)


def test_unet_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = UNet(1, base_channels=4, channel_mults=(1, 2), dropout=0.5)
    x, t = torch.randn(2, 1, 4, 4), torch.rand(2)
    with torch.no_grad():
        assert not torch.equal(model.train()(x, t), model(x, t))
        assert torch.equal(model.eval()(x, t), model(x, t))
        plain = UNet(1, base_channels=4, channel_mults=(1, 2)).train()
        assert torch.equal(plain(x, t), plain(x, t))


@pytest.mark.parametrize("make, shape", [
    (lambda: UNet(1, base_channels=4, channel_mults=(1, 2), dropout=0.3, groups=2, num_classes=2), (1, 4, 4)),
    (lambda: VelocityMLP((1, 2, 2), hidden=8, depth=2, time_dim=6, num_classes=2), (1, 2, 2)),
])
def test_config_rebuilds_the_same_net(make, shape):
    from kinetic_fm.models import build_model

    torch.manual_seed(0)
    model = make()
    clone = build_model(model.kind, model.config)
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x, t = torch.randn(3, *shape), torch.rand(3)
    with torch.no_grad():
        for mode in (False, True):  # train mode: the same dropout masks from the same seed
            model.train(mode), clone.train(mode)
            torch.manual_seed(1)
            out = model(x, t)
            torch.manual_seed(1)
            assert torch.equal(clone(x, t), out)
    torch.manual_seed(0)
    again = make()  # same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("kwargs, name", [
    (dict(channel_mults=(1, 0)), "channel_mults"), (dict(channel_mults=()), "channel_mults"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(channel_mults=(1, 2), attention_levels=(2,)), "attention_levels"),
    (dict(channel_mults=(1, 2), attention_levels=(-1,)), "attention_levels"),
    (dict(base_channels=7), "base_channels"), (dict(base_channels=0), "base_channels"),
    (dict(groups=0), "groups"), (dict(in_channels=0), "in_channels"),
])
def test_unet_refuses_bad_architecture_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        UNet(**{"in_channels": 1, "base_channels": 4, **kwargs})


@pytest.mark.parametrize("make, name", [
    (lambda: UNet(1.5, base_channels=4), "in_channels"), (lambda: UNet(1, base_channels=4.0), "base_channels"),
    (lambda: UNet(1, base_channels=4, channel_mults=(1, 1.5)), r"channel_mults\[1\]"),
    (lambda: UNet(1, base_channels=4, num_res_blocks=1.5), "num_res_blocks"),
    (lambda: UNet(1, base_channels=4, attention_levels=(0.5,)), r"attention_levels\[0\]"),
    (lambda: UNet(1, base_channels=4, num_classes=0), "num_classes"),
    (lambda: UNet(1, base_channels=4, num_classes=-1), "num_classes"),
    (lambda: UNet(1, base_channels=4, dropout=1.0), "dropout"),
    (lambda: UNet(1, base_channels=4, dropout=float("nan")), "dropout"),
    (lambda: VelocityMLP(()), "shape"), (lambda: VelocityMLP((1, 0, 8)), r"shape\[1\]"),
    (lambda: VelocityMLP(-2), r"shape\[0\]"), (lambda: VelocityMLP(True), r"shape\[0\]"),
    (lambda: VelocityMLP(2, hidden=16.0), "hidden"), (lambda: VelocityMLP(2, depth=2.5), "depth"),
    (lambda: VelocityMLP(2, num_classes=0), "num_classes"),
])
def test_velocity_nets_refuse_non_integer_sizes_and_empty_class_sets(make, name):
    # before: a float size failed deep in torch, shape 0 and num_classes 0 or -1 built a net silently
    with pytest.raises(ValueError, match=name):
        make()


def test_velocity_nets_take_numpy_sizes_and_save_them_as_plain_integers(tmp_path):
    """Sizes from a NumPy sweep (np.int64) build the same net as Python ints, and its config goes
    into the checkpoint's JSON metadata (np.int64 there stopped save_model after training)."""
    np = pytest.importorskip("numpy")
    from kinetic_fm.models import load_model, save_model

    for make in (lambda i: UNet(i(1), base_channels=i(4), channel_mults=[i(1), i(2)], attention_levels=[i(1)],
                                num_classes=i(3), dropout=np.float32(0.25) if i is np.int64 else 0.25),
                 lambda i: VelocityMLP(i(3), hidden=i(8), depth=i(1), time_dim=i(4), num_classes=i(2))):
        plain, numpy_sized = make(int), make(np.int64)
        assert numpy_sized.config == plain.config
        assert all(type(v) is not np.int64 for v in numpy_sized.config.values())
        save_model(numpy_sized, tmp_path / "net.safetensors")
        assert load_model(tmp_path / "net.safetensors", weights="model").config == plain.config


def test_velocity_nets_refuse_inputs_of_the_wrong_shape():
    unet = UNet(1, base_channels=4, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(torch.randn(1, 1, 6, 8), torch.rand(1))  # H fails, W passes
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(torch.randn(1, 1, 8, 6), torch.rand(1))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        unet(torch.randn(1, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        VelocityMLP((1, 8, 8), hidden=8, depth=1)(torch.randn(2, 64), torch.rand(2))  # same numel, wrong shape
    for kwargs, name in ((dict(depth=0), "depth"), (dict(hidden=0), "hidden"), (dict(time_dim=7), "time_dim")):
        with pytest.raises(ValueError, match=name):
            VelocityMLP(2, **kwargs)


@pytest.mark.parametrize("make, shape", [
    (lambda: VelocityMLP(2, hidden=8, depth=1, num_classes=3), (4, 2)),
    (lambda: UNet(1, base_channels=8, channel_mults=(1, 2), num_classes=3), (4, 1, 8, 8)),
])
@pytest.mark.parametrize("y, message", [
    (torch.tensor([0, 1, 2, 4]), r"classes in \[0, 3\] \(3 = no class\), got values in \[0, 4\]"),
    (torch.tensor([0, -1, 2, 3]), r"got values in \[-1, 3\]"),
    (torch.tensor([[0], [1], [2], [3]]), r"y must be a \(4,\) integer tensor .* got \(4, 1\)"),   # broadcast to (4, 4, hidden)
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"y must be a \(4,\) integer tensor .* torch.float32"),
])
def test_class_conditional_nets_name_a_bad_y(make, shape, y, message):
    # these failed as torch's IndexError, "Expected tensor for argument #1 'indices'", or a shape
    # error far from the cause
    net = make()
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(shape), torch.zeros(shape[0]), y)
    assert net(torch.zeros(shape), torch.zeros(shape[0]), torch.tensor([0, 1, 2, 3])).shape == shape


def test_narrow_integer_labels_condition_as_int64_and_a_net_saves_as_its_own_ema(tmp_path):
    # uint8/int8/int16 labels passed the label check, then failed in nn.Embedding; save_model(net,
    # ema=net) failed in safetensors ("Some tensors share memory")
    from kinetic_fm.models import load_model, save_model

    net = VelocityMLP(2, hidden=8, depth=1, num_classes=3)
    x, labels = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    expected = net(x, 0.5, labels)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert torch.equal(net(x, 0.5, labels.to(dtype)), expected)
    save_model(net, tmp_path / "net.safetensors", ema=net)
    for weights in ("ema", "model"):
        assert torch.equal(load_model(tmp_path / "net.safetensors", weights=weights)(x, 0.5, labels), expected)
