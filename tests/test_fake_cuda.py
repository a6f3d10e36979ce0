"""Self-test of fake_cuda: it must refuse what real CUDA refuses, accept what CUDA accepts, count
the host synchronisations CUDA would make, and compute the CPU's numbers.

    python -m pytest -q tests/test_fake_cuda.py
"""
import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from fake_cuda import fake_cuda, is_fake_cuda

SAME_DEVICE = "Expected all tensors to be on the same device"


@pytest.fixture
def fc():
    with fake_cuda() as h:
        yield h


# ------------------------------------------------------------------ buggy snippets: must raise
def test_cpu_arange_added_to_cuda_tensor_raises(fc):
    x = torch.randn(3, device="cuda")
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        x + torch.arange(3)
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        torch.arange(3) * x


def test_numpy_of_cuda_tensor_raises(fc):
    x = torch.ones(2, device="cuda")
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        x.numpy()
    with pytest.raises(TypeError, match="can't convert cuda:0"):
        np.asarray(x)


def test_generator_on_the_wrong_device_raises(fc):
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator but found 'cpu'"):
        torch.randn(3, generator=torch.Generator().manual_seed(0), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    assert g.device == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator but found 'cuda'"):
        torch.randn(3, generator=g)
    x = torch.empty(4, device="cuda")
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
        x.normal_(generator=torch.Generator())
    torch.randn(3, generator=g, device="cuda")            # the right pairing works
    x.normal_(generator=g)


def test_index_select_gather_cat_with_cpu_operands_raise(fc):
    x = torch.randn(4, 3, device="cuda")
    idx = torch.tensor([0, 2])
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        torch.index_select(x, 0, idx)
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        x.gather(1, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        torch.cat([x, torch.zeros(1, 3)])
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        x.index_add_(0, idx, torch.ones(2, 3, device="cuda"))


def test_cpu_tensor_indexed_by_a_cuda_index_raises(fc):
    cpu = torch.arange(5.0)
    with pytest.raises(RuntimeError, match="indices should be either on cpu or on the same device"):
        cpu[torch.tensor([1, 2], device="cuda")]
    with pytest.raises(RuntimeError, match="indices should be either on cpu or on the same device"):
        cpu[torch.tensor([True, False, True, False, True], device="cuda")]


def test_advanced_setitem_with_a_cpu_value_raises(fc):
    x = torch.zeros(4, device="cuda")
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        x[torch.tensor([0, 1], device="cuda")] = torch.ones(2)
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        x[x == 0] = torch.ones(4)


def test_cpu_module_on_cuda_input_raises(fc):
    net = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        net(torch.randn(5, 3, device="cuda"))


def test_invalid_device_ordinal_raises(fc):
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.ones(2).to("cuda:1")


# ------------------------------------------------------------------ correct snippets: must pass
def test_correct_snippets_pass(fc):
    x = torch.randn(3, device="cuda")
    assert x.device == torch.device("cuda", 0) and x.is_cuda and not x.is_cpu
    for y in (torch.zeros(3, device=x.device) + x, x + 1.0, x * torch.tensor(2.0), torch.where(x > 0, x, 0.0),
              torch.maximum(x, torch.tensor(0.5)), x.clamp(min=torch.tensor(0.0))):
        assert is_fake_cuda(y) and y.device.type == "cuda"
    host = x.cpu()
    assert not is_fake_cuda(host) and host.device.type == "cpu"
    assert host.numpy().shape == (3,)
    assert x[torch.tensor([0, 2])].device.type == "cuda"          # CPU index on a CUDA tensor: allowed
    assert x[[0, 2]].shape == (2,)
    x[1:] = torch.ones(2)                                           # basic index: a copy_, allowed
    x[torch.tensor([0])] = 5.0                                      # python scalar value
    x[x > 100] = torch.tensor(1.0)                                  # 0-dim CPU value
    assert f"{x.sum():.3f}"                                         # format a 0-dim CUDA tensor
    assert "device='cuda:0'" in repr(x)
    assert x.get_device() == 0
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1
    torch.cuda.synchronize()


def test_copies_across_devices_do_not_alias(fc):
    host = torch.zeros(3)
    dev = host.to("cuda")
    dev += 1
    assert host.sum().item() == 0
    back = dev.cpu()
    back += 1
    assert dev.cpu().sum().item() == 3
    arr = np.zeros(3, dtype=np.float32)
    t = torch.as_tensor(arr, device="cuda")
    t += 1
    assert arr.sum() == 0


def test_numbers_equal_the_cpu_run():
    def compute(device):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(64, 32, generator=g, dtype=torch.float64).to(device)
        b = torch.randn(32, 16, generator=g, dtype=torch.float64).to(device)
        c = (a @ b).softmax(dim=1)
        d = torch.cdist(a, a).topk(3, dim=1, largest=False)
        e = torch.linalg.vector_norm(c, dim=1) + torch.logsumexp(a, dim=1)
        return [c.cpu(), d.values.cpu(), d.indices.cpu(), e.cpu()]

    want = compute("cpu")
    with fake_cuda():
        got = compute("cuda")
    for g_, w in zip(got, want):
        assert torch.equal(g_, w)


# ------------------------------------------------------------------ sync counting
@pytest.mark.parametrize("snippet, kind, n", [
    ("x.item() if x.dim() == 0 else x[0].item()", "host_read", 1),
    ("bool(x.any())", "host_read", 1),
    ("float(x.sum())", "host_read", 1),
    ("x.tolist()", "host_read", 1),
    ("x[x > 0]", "shape", 1),
    ("x.nonzero()", "shape", 1),
    ("torch.unique(x)", "shape", 1),
    ("x.cpu()", "d2h", 1),
    ("torch.ones(3).to('cuda')", "h2d", 1),
    ("torch.tensor([1.0, 2.0], device='cuda')", "h2d", 1),
    ("x[torch.tensor([0, 1])]", "h2d", 1),
    ("torch.equal(x, x)", "compare", 1),
    ("x + 1", None, 0),
    ("x.sum()", None, 0),
    ("torch.zeros(3, device='cuda')", None, 0),
    ("torch.full((3,), 2.0, device='cuda')", None, 0),
    ("x[torch.arange(2, device='cuda')]", None, 0),
    ("x.__setitem__(x > 0, 0.0)", None, 0),
    ("x.__setitem__(x > 0, torch.ones_like(x)[x > 0])", "shape", 2),
    ("torch.where(x > 0, x, 0.0)", None, 0),
])
def test_sync_counts(snippet, kind, n):
    with fake_cuda() as fc:
        x = torch.randn(6, device="cuda")
        fc.reset()
        eval(snippet, {"torch": torch, "x": x})
        assert fc.count() == n, fc.summary()
        if kind:
            assert all(e.kind == kind for e in fc.events), fc.summary()
            assert fc.events[0].where == "<string>:1"       # the line of the snippet itself


# ------------------------------------------------------------------ modules, autograd, optim
def _train_steps(device, steps=3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Linear(16, 4)).double().to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 4, generator=g, dtype=torch.float64).to(device)
        loss = (net(x) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 0.1)
        losses.append(loss.detach().to("cpu"))
    return torch.stack(losses), [p.detach().cpu() for p in ema.parameters()], net


def test_the_device_generic_stream_is_the_fake_devices():
    # torch.optim's graph-capture check asks torch.accelerator for the current stream; on a CUDA
    # build of torch without a driver the real call raised cudaErrorInsufficientDriver (and on a
    # CPU build it has no device to answer for)
    with fake_cuda() as fc:
        stream = torch.accelerator.current_stream()
        assert stream.is_capturing() is False and stream.query() is True
        stream.synchronize()
        assert [e.kind for e in fc.events] == ["synchronize"]
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.accelerator.current_stream("cuda:1")


def test_module_to_cuda_trains_like_the_cpu():
    want, want_ema, _ = _train_steps("cpu")
    with fake_cuda():
        got, got_ema, net = _train_steps("cuda")
        p = next(net.parameters())
        assert isinstance(p, nn.Parameter) and p.device.type == "cuda" and p.is_leaf
        assert p.grad is not None and p.grad.device.type == "cuda"
        state = {k: v for k, v in net.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
    assert torch.equal(got, want)
    for a, b in zip(got_ema, want_ema):
        assert torch.equal(a, b)
    buf.seek(0)
    loaded = torch.load(buf, map_location="cpu", weights_only=True)
    assert all(not is_fake_cuda(v) for v in loaded.values())


# ------------------------------------------------------------------ TF32 and RNG emulation
def test_tf32_products_are_emulated_when_enabled():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 64, generator=g)
    exact = a.double() @ b.double()
    with fake_cuda():
        off = (a.cuda() @ b.cuda()).cpu().double()
        matmul = torch.backends.cuda.matmul
        api = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"   # torch < 2.9: legacy only
        old = getattr(matmul, api)
        setattr(matmul, api, "tf32" if api == "fp32_precision" else True)
        try:
            on = (a.cuda() @ b.cuda()).cpu().double()
            lin = nn.functional.linear(a.cuda(), b.T.cuda()).cpu().double()
        finally:
            setattr(matmul, api, old)
    rel = lambda m: ((m - exact).norm() / exact.norm()).item()  # noqa: E731
    assert rel(off) < 1e-6 and 1e-5 < rel(on) < 3e-3 and 1e-5 < rel(lin) < 3e-3


def test_cuda_default_rng_is_separate_from_the_cpu_one():
    with fake_cuda():
        torch.manual_seed(0)
        a = torch.randn(3, device="cuda")
        c = torch.randn(3)
        torch.manual_seed(0)
        b = torch.randn(3, device="cuda")
        d = torch.randn(3)
        state = torch.cuda.get_rng_state()
        e = torch.nn.functional.dropout(torch.ones(1000, device="cuda"), 0.5)
        torch.cuda.set_rng_state(state)
        f = torch.nn.functional.dropout(torch.ones(1000, device="cuda"), 0.5)
    torch.manual_seed(0)
    assert torch.equal(a.cpu(), b.cpu()) and torch.equal(c, d) and torch.equal(c, torch.randn(3))
    assert torch.equal(e.cpu(), f.cpu())


def test_state_is_restored_on_exit():
    real_generator = torch.Generator
    with fake_cuda():
        x = torch.ones(2, device="cuda")
    assert torch.Generator is real_generator
    assert not torch.cuda.is_available() or torch.version.cuda
    assert (x + 1).sum().item() == 4            # an escaped "cuda" tensor computes as a CPU one


def test_module_to_with_device_and_dtype_keywords_moves_buffers(fc):
    # nn.Module.to parses its arguments with torch._C._nn._parse_to, which must not be rewritten
    m = nn.Module()
    m.register_buffer("b", torch.ones(3), persistent=False)
    m.lin = nn.Linear(2, 2)
    m.to(device=torch.device("cuda", 0), dtype=torch.float64)
    assert is_fake_cuda(m.b) and is_fake_cuda(m.lin.weight) and m.b.dtype == torch.float64
    m.cpu()
    assert not is_fake_cuda(m.b) and not is_fake_cuda(m.lin.weight)


def test_fork_rng_saves_and_restores_the_cuda_generator(fc):
    torch.manual_seed(3)
    with torch.random.fork_rng():
        a = torch.rand(4, device="cuda")
    b = torch.rand(4, device="cuda")
    assert torch.equal(a.cpu(), b.cpu())


def test_new_tensor_and_like_factories_follow_the_device_asked(fc):
    x = torch.ones(3, device="cuda")
    assert is_fake_cuda(torch.zeros_like(x)) and not is_fake_cuda(torch.zeros_like(x, device="cpu"))
    assert is_fake_cuda(x.new_zeros(2)) and is_fake_cuda(x.new_tensor([1.0, 2.0]))
    assert is_fake_cuda(torch.ones(2).to(x)) and not is_fake_cuda(x.to(torch.ones(1)))
