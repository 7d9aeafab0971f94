"""The fused training BatchNorm + ReLU6 (mobilenetv2.model.bnact, issue 14) against torch's
nn.BatchNorm2d + ReLU6: outputs, running statistics, gradients; and every case it must leave
to torch takes torch's path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2.model import bnact
from mobilenetv2.model.layers import ConvBNAct
from support.kernels import count_calls, digits_loss_curve, kernel_isa, kernel_isas

pytestmark = pytest.mark.skipif(not bnact.AVAILABLE, reason=bnact.UNAVAILABLE or "built")
CL = torch.channels_last


@pytest.fixture
def calls(monkeypatch):
    """How many times the fused op ran."""
    return count_calls(monkeypatch, bnact, "fused_bn_act")


@pytest.fixture(params=kernel_isas())
def isa(request):
    with kernel_isa(request.param):
        yield request.param


def _reference(m: ConvBNAct, x: torch.Tensor) -> torch.Tensor:
    for child in m:  # torch's modules one by one: the path the fused op replaces
        x = child(x)
    return x


def _compare(m: ConvBNAct, x: torch.Tensor, steps: int = 1, atol: float = 1e-5) -> None:
    ref = copy.deepcopy(m)
    for _ in range(steps):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = m(x1), _reference(ref, x2)
        g = torch.randn_like(y2)
        y1.backward(g)
        y2.backward(g)
        torch.testing.assert_close(y1, y2, atol=atol, rtol=1e-5)
        torch.testing.assert_close(x1.grad, x2.grad, atol=atol, rtol=1e-4)
    for (name, p1), p2 in zip(m.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-4, msg=name)
    for (name, b1), b2 in zip(m.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b1, b2, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("act", [nn.ReLU6, None], ids=["relu6", "linear"])
@pytest.mark.parametrize("channels", [13, 24])
def test_matches_torch(calls, isa, act, channels):
    torch.manual_seed(0)
    m = ConvBNAct(5, channels, 3, act=act).train()
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 2.0)
        m.bn.bias.uniform_(-1.0, 3.0)
    x = (torch.randn(3, 5, 11, 9) * 2 + 0.5).to(memory_format=CL)
    _compare(m, x, steps=2)
    assert calls[0] == 2
    assert m.bn.num_batches_tracked.item() == 2


def test_large_channel_statistics(calls):
    """~400k values per channel with a large mean: batch mean / variance to ~1e-5 relative."""
    torch.manual_seed(0)
    m = ConvBNAct(1, 3, 1, act=None).train()
    m.bn.momentum = 1.0  # the running statistics become the batch's
    x = (torch.randn(4, 1, 320, 320) + 0).to(memory_format=CL)
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1))
    x = x + 40.0  # a mean 40x the std: E[x^2] - E[x]^2 cancels unless shifted
    x.requires_grad_()
    m(x).sum().backward()
    z = F.conv2d(x.detach().double(), m.conv.weight.double())
    mean = z.mean(dim=(0, 2, 3))
    var = z.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(m.bn.running_mean.double(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(m.bn.running_var.double(), var, rtol=1e-5, atol=0)
    assert calls[0] == 1


def test_clamp_edges(calls, isa):
    """Channels whose BN output is exactly 0 or 6 (gamma 0, beta 0 / 6): torch's ReLU6
    passes no gradient there, nor must the fused op; other channels straddle the edges."""
    torch.manual_seed(1)
    m = ConvBNAct(4, 10, 1).train()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([0, 0, 1, 2, 3, 1, 1, 4, 0.5, 1.0]))
        m.bn.bias.copy_(torch.tensor([0, 6, 0, 6, 3, -1, 7, 3, 6, 0]))
    x = torch.randn(2, 4, 7, 5).to(memory_format=CL)
    _compare(m, x)
    assert calls[0] == 1


def test_momentum_none_cumulative_average(calls):
    torch.manual_seed(2)
    m = ConvBNAct(3, 9, 1).train()
    m.bn.momentum = None
    _compare(m, torch.randn(2, 3, 6, 6).to(memory_format=CL), steps=3)
    assert calls[0] == 3 and m.bn.num_batches_tracked.item() == 3


def test_one_value_per_channel_raises_like_torch(calls):
    m = ConvBNAct(3, 8, 1).train()
    x = torch.randn(1, 3, 1, 1).to(memory_format=CL)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        m(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        _reference(m, x)


@pytest.mark.parametrize("pool", ["omp", "own"])
def test_threads_do_not_change_results(pool):
    """The chunks and their order depend on the shape alone (the kernel's docs), on torch's
    OpenMP team and on the extension's own pool (the fallback where no libgomp is loaded)."""
    prev = bnact._bnact.pool()
    bnact._bnact.set_pool(pool)
    try:
        _same_results_for_1_2_3_threads()
    finally:
        bnact._bnact.set_pool(prev)


def _same_results_for_1_2_3_threads():
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(16).train()
    x = torch.randn(4, 16, 128, 64).to(memory_format=CL).requires_grad_()
    g = torch.randn_like(x)
    outs = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            x.grad = None
            y = bnact.fused_bn_act(x, bn, clamp=True)
            y.backward(g)
            outs.append((y.detach(), x.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for y, dx in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(dx, outs[0][1])


class _BN(nn.BatchNorm2d):
    pass


def _fallbacks():
    """(name, make module, make input, context): each must take torch's path."""
    cl = lambda: torch.randn(2, 3, 6, 6).to(memory_format=CL)  # noqa: E731
    plain = lambda: ConvBNAct(3, 8, 3).train()  # noqa: E731

    def swap_bn(m):
        bn = _BN(8)
        bn.load_state_dict(m.bn.state_dict())
        m.bn = bn
        return m

    def hooked(m):
        m.bn.register_forward_hook(lambda *a: None)
        return m

    def non_affine(m):
        m.bn = nn.BatchNorm2d(8, affine=False)
        return m

    def no_stats(m):
        m.bn = nn.BatchNorm2d(8, track_running_stats=False)
        return m

    def other_act(m):
        m.act = nn.ReLU(inplace=True)
        return m

    return [
        ("eval", lambda: plain().eval(), cl, None),
        ("nchw", plain, lambda: torch.randn(2, 3, 6, 6), None),
        ("subclass of BatchNorm2d", lambda: swap_bn(plain()), cl, None),
        ("hook on bn", lambda: hooked(plain()), cl, None),
        ("non-affine", lambda: non_affine(plain()), cl, None),
        ("no running stats", lambda: no_stats(plain()), cl, None),
        ("another activation", lambda: other_act(plain()), cl, None),
        ("float64", lambda: plain().double(), lambda: cl().double(), None),
        ("no_grad", plain, cl, torch.no_grad),
        ("autocast bf16", plain, cl,
         lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
        ("env off", plain, cl, "env"),
    ]


@pytest.mark.parametrize("name,make,inp,ctx", _fallbacks(), ids=[f[0] for f in _fallbacks()])
def test_fallbacks_take_torch_path(calls, monkeypatch, name, make, inp, ctx):
    torch.manual_seed(4)
    m = make()
    ref = copy.deepcopy(m)
    x = inp()
    if ctx == "env":
        monkeypatch.setenv("MOBILENETV2_FUSED_BN", "0")
        ctx = None
    with ctx() if ctx else torch.enable_grad():
        y1, y2 = m(x), _reference(ref, x)
    assert calls[0] == 0
    torch.testing.assert_close(y1, y2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fx_trace_and_script_take_torch_path(calls):
    m = ConvBNAct(3, 8, 3).train()
    gm = torch.fx.symbolic_trace(m)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets[:2] == ["conv", "bn"]  # torch's BatchNorm2d, as before the fused op
    # scripting compiles ConvBNAct's plain loop (linear: the ReLU6 class itself does not
    # script, before and after the fused op)
    lin = ConvBNAct(3, 8, 3, act=None).train()
    scripted = torch.jit.script(copy.deepcopy(lin))
    x = torch.randn(2, 3, 6, 6).to(memory_format=CL)
    torch.testing.assert_close(scripted(x), _reference(copy.deepcopy(lin), x))
    assert calls[0] == 0


def test_digits_network_loss_curve_matches(calls, monkeypatch):
    """A few SGD steps of a digits-style network (width 0.35, small_input, 32x32), channels_last:
    the fused path's loss curve is as close to a float64 run of torch's path as torch's own
    float32 path is (at initialisation this network's fp32 gradients differ by ~1% between
    torch's own layouts, so float64 is the reference). Dropout off: the runs compare exactly."""
    def curve(on: bool, dtype: torch.dtype) -> torch.Tensor:
        return digits_loss_curve(monkeypatch, "MOBILENETV2_FUSED_BN", on, dtype)

    exact = curve(False, torch.float64)
    assert calls[0] == 0
    plain = curve(False, torch.float32)
    fused = curve(True, torch.float32)
    assert calls[0] > 0
    assert fused[-1] < fused[0]  # it trains
    assert (fused - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-4


def test_torch_compile_takes_torch_path(calls):
    """Under torch.compile (dynamo; the eager backend keeps the test fast) the graph holds
    torch's BatchNorm, not the fused op."""
    torch.manual_seed(7)
    m = ConvBNAct(3, 8, 3).train()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 3, 6, 6).to(memory_format=CL)
    y = torch.compile(m, backend="eager")(x)
    assert calls[0] == 0
    torch.testing.assert_close(y, _reference(ref, x))


def test_second_derivative_raises(calls):
    """The fused backward is not itself differentiable: asking for it fails loudly."""
    m = ConvBNAct(3, 8, 1).train()
    x = torch.randn(2, 3, 5, 5).to(memory_format=CL).requires_grad_()
    (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
    assert calls[0] == 1
