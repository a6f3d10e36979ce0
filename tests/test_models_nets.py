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
